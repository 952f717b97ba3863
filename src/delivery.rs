//! Exactly-once forwarding within the dedup window: claim the event in Redis, publish it,
//! then mark it done, or release the claim so that the provider's retry goes through.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use log::{error, warn};

use crate::config::OnRedisUnavailable;
use crate::dedup::{ClaimOutcome, DedupError, DedupStore};
use crate::event::Event;
use crate::metrics::{DedupOperation, Metrics};
use crate::publisher::{PublishError, Publisher};

/// Result of forwarding a valid callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The broker confirmed the event.
    Published,
    /// The event had already been published within the dedup window.
    Duplicate,
}

/// Failure to forward a valid callback now. The provider should retry.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("dedup store unavailable: {0}")]
    Dedup(#[from] DedupError),
    #[error("another request for this event was still publishing when the wait ran out")]
    StillPending,
    #[error("publish failed: {0}")]
    Publish(#[from] PublishError),
    #[error("delivery task was cancelled or panicked")]
    Interrupted,
}

impl DeliveryError {
    /// Returns whether a retry can succeed without an operator changing configuration or
    /// topology.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Publish(cause) => cause.is_retriable(),
            _ => true,
        }
    }
}

/// Claims, publishes and records events, and counts publishes and Redis failures in
/// `metrics`.
pub struct Delivery {
    dedup: DedupStore,
    publisher: Arc<dyn Publisher>,
    on_redis_unavailable: OnRedisUnavailable,
    metrics: Arc<Metrics>,
}

impl Delivery {
    pub fn new(
        dedup: DedupStore,
        publisher: Arc<dyn Publisher>,
        on_redis_unavailable: OnRedisUnavailable,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            dedup,
            publisher,
            on_redis_unavailable,
            metrics,
        }
    }

    /// Publishes `event` unless it was already published; returns only after the broker
    /// confirmed it. On failure the claim is released, so nothing is left that would turn
    /// the provider's retry into a false duplicate.
    pub async fn deliver(&self, event: &Event) -> Result<Outcome, DeliveryError> {
        let claimed = self.dedup.claim(event).await;
        let claimed =
            claimed.inspect_err(|_| self.metrics.record_dedup_error(DedupOperation::Claim));
        let claim = match claimed {
            Ok(ClaimOutcome::Claimed(claim)) => Some(claim),
            Ok(ClaimOutcome::AlreadyDone) => return Ok(Outcome::Duplicate),
            Ok(ClaimOutcome::StillPending) => return Err(DeliveryError::StillPending),
            Err(cause) if self.on_redis_unavailable == OnRedisUnavailable::Publish => {
                warn!(
                    task_id:% = event.task_id,
                    event_type = event.event_type.as_str(),
                    cause:% = cause;
                    "Redis is unavailable; publishing without deduplication."
                );
                None
            }
            Err(cause) => return Err(cause.into()),
        };

        if let Err(cause) = self.publish(event).await {
            if let Some(claim) = &claim
                && let Err(release_error) = self.dedup.release(claim).await
            {
                self.metrics.record_dedup_error(DedupOperation::Release);
                error!(
                    task_id:% = event.task_id,
                    event_type = event.event_type.as_str(),
                    cause:% = release_error;
                    "Releasing the dedup claim failed; re-deliveries get 503 until the claim expires."
                );
            }
            return Err(cause.into());
        }

        if let Some(claim) = &claim
            && let Err(cause) = self.dedup.mark_done(claim).await
        {
            self.metrics.record_dedup_error(DedupOperation::MarkDone);
            warn!(
                task_id:% = event.task_id,
                event_type = event.event_type.as_str(),
                cause:% = cause;
                "Event published, but recording it in Redis failed; a re-delivery after the claim expires will publish it again."
            );
        }
        Ok(Outcome::Published)
    }

    /// Publishes `event` and records the publish duration and result.
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let started = Instant::now();
        // A panic inside a broker client must not leave the claim behind: it would turn every
        // retry into 503 until the claim expires.
        let published = AssertUnwindSafe(self.publisher.publish(event))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::Broker(
                    "the broker client panicked".to_owned(),
                ))
            });
        match &published {
            Ok(()) => self
                .metrics
                .record_published(event.event_type, started.elapsed()),
            Err(cause) => self
                .metrics
                .record_publish_failure(cause, started.elapsed()),
        }
        published
    }
}
