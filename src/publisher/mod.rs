//! The broker seam: one [`Publisher`] trait, one implementation per broker (RabbitMQ and
//! Kafka). A publish returns only after the broker confirmed the event, or fails.

mod channel_pool;
mod kafka;
mod rabbitmq;

use std::time::Duration;

use async_trait::async_trait;

pub use kafka::{KafkaPublisher, message_headers};
pub use rabbitmq::RabbitMqPublisher;

use crate::dead_letter::DeadLetter;
use crate::event::Event;

/// Failure to get an event confirmed by the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker connection is down")]
    NotConnected,
    #[error("broker did not confirm the event within {0:?}")]
    Timeout(Duration),
    #[error("broker rejected the event (negative acknowledgement)")]
    Nacked,
    #[error("broker returned the event as unroutable: {reply_code} {reply_text}")]
    Unroutable { reply_code: u16, reply_text: String },
    #[error("broker refused the event: {reason}")]
    Rejected { reason: String, retriable: bool },
    #[error("broker error: {0}")]
    Broker(String),
}

impl PublishError {
    /// Returns whether the same publish may succeed later without a change of configuration
    /// or topology. An unroutable event needs a queue or binding first, and a missing Kafka
    /// topic needs creating.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Unroutable { .. } => false,
            Self::Rejected { retriable, .. } => *retriable,
            _ => true,
        }
    }
}

/// A broker client that publishes events with confirmation.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `event` and waits for the broker's confirmation.
    async fn publish(&self, event: &Event) -> Result<(), PublishError>;

    /// Publishes a dead letter to its own routing key or topic and waits for the broker's
    /// confirmation. Unlike an event, its outcome does not change readiness.
    async fn publish_dead_letter(&self, dead_letter: &DeadLetter) -> Result<(), PublishError>;

    /// Returns whether the broker connection is up and confirming publishes.
    fn is_connected(&self) -> bool;

    /// Delivers what is still buffered and closes the broker connection, within the given
    /// time.
    async fn shutdown(&self, limit: Duration);
}
