//! Confirm-mode channels lent out for one publish at a time. lapin 4 attaches a returned
//! (unroutable) message to whichever confirm of its channel completes next. On a channel with
//! several unconfirmed publishes, one event's return can land on another event's ack, so the
//! unroutable event would get 200 and the routable one 503. With one publish per channel at a
//! time, a return always belongs to its own publish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use log::warn;
use tokio::sync::Semaphore;
use tokio::time::timeout;

/// AMQP reply code of a normal close.
const REPLY_SUCCESS: u16 = 200;

/// A fixed set of confirm-mode channels on one connection.
pub struct ChannelPool {
    connection: Arc<Connection>,
    idle: Mutex<Vec<Channel>>,
    /// One permit per idle channel.
    available: Semaphore,
    /// Set when the broker closed a channel, which usually means that the topology changed,
    /// such as a deleted exchange. The supervisor then rebuilds the whole link.
    broken: AtomicBool,
    /// Time allowed to replace a channel.
    replace_timeout: Duration,
}

impl ChannelPool {
    /// Opens `size` confirm-mode channels on `connection`.
    pub async fn open(
        connection: Arc<Connection>,
        size: usize,
        replace_timeout: Duration,
    ) -> Result<Arc<Self>, lapin::Error> {
        let mut channels = Vec::with_capacity(size);
        for _ in 0..size {
            channels.push(open_confirm_channel(&connection).await?);
        }
        Ok(Arc::new(Self {
            connection,
            idle: Mutex::new(channels),
            available: Semaphore::new(size),
            broken: AtomicBool::new(false),
            replace_timeout,
        }))
    }

    /// Waits for an idle channel; the caller bounds the wait.
    pub async fn acquire(self: &Arc<Self>) -> Lease {
        let permit = self
            .available
            .acquire()
            .await
            .expect("the pool's semaphore is never closed");
        permit.forget();
        let channel = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
            .expect("every permit stands for an idle channel");
        Lease {
            pool: self.clone(),
            channel: Some(channel),
            finished: false,
        }
    }

    /// Returns whether the broker has closed none of the channels.
    pub fn is_intact(&self) -> bool {
        !self.broken.load(Ordering::SeqCst)
    }

    /// Closes every idle channel, for a clean shutdown.
    pub async fn close(&self) {
        let channels: Vec<Channel> = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .drain(..)
            .collect();
        for channel in channels {
            if channel.status().connected()
                && let Err(cause) = channel.close(REPLY_SUCCESS, "OK".into()).await
            {
                warn!(cause:% = cause; "Closing a RabbitMQ channel failed.");
            }
        }
    }

    fn give_back(&self, channel: Channel) {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(channel);
        self.available.add_permits(1);
    }

    /// Swaps a channel whose publish did not complete for a new one in the background: a late
    /// confirm or return for that publish would otherwise be taken for the next one's.
    fn replace(self: &Arc<Self>, channel: Channel) {
        let pool = self.clone();
        tokio::spawn(async move {
            let replaced = timeout(pool.replace_timeout, async {
                if channel.status().connected() {
                    let _ = channel.close(REPLY_SUCCESS, "replaced".into()).await;
                }
                open_confirm_channel(&pool.connection).await
            })
            .await;
            match replaced {
                Ok(Ok(channel)) => pool.give_back(channel),
                Ok(Err(cause)) => {
                    warn!(cause:% = cause; "Replacing a RabbitMQ channel failed; reconnecting.");
                    pool.broken.store(true, Ordering::SeqCst);
                }
                Err(_) => {
                    warn!("Replacing a RabbitMQ channel timed out; reconnecting.");
                    pool.broken.store(true, Ordering::SeqCst);
                }
            }
        });
    }
}

/// A channel lent for one publish. Dropped unfinished, it is replaced instead of reused.
pub struct Lease {
    pool: Arc<ChannelPool>,
    channel: Option<Channel>,
    finished: bool,
}

impl Lease {
    pub fn channel(&self) -> &Channel {
        self.channel
            .as_ref()
            .expect("the channel is taken only on drop")
    }

    /// Marks the publish as confirmed, nacked or returned, so the channel can be reused.
    pub fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(channel) = self.channel.take() else {
            return;
        };
        if !channel.status().connected() {
            self.pool.broken.store(true, Ordering::SeqCst);
            self.pool.replace(channel);
        } else if self.finished {
            self.pool.give_back(channel);
        } else {
            self.pool.replace(channel);
        }
    }
}

async fn open_confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}
