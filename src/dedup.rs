//! Redis-backed deduplication shared by every replica. An event is claimed with one atomic
//! `SET key pending:<token> NX PX <pending_ttl>`, marked `done` with the long TTL once the
//! broker confirmed it, or released (only while the claim is still ours) when publishing
//! failed. Every key is written with a TTL.

use std::time::Duration;

use log::warn;
use redis::aio::ConnectionManager;
use redis::{Client, IntoConnectionInfo, Script};
use tokio::time::{Instant, sleep, timeout};

use crate::config::RedisSettings;
use crate::event::Event;

const DONE: &str = "done";
const PENDING_PREFIX: &str = "pending:";

/// Interval between checks while a re-delivery waits for another request's claim.
const PENDING_POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Marks a claim done, unless another request has claimed the key since ours expired.
const MARK_DONE: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or current == false then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
  return 1
end
return 0
";

/// Deletes a claim only while it still contains our token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Redis failure: no reply in time, or an error reply.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("Redis command timed out after {0:?}")]
    Timeout(Duration),
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
}

impl DedupError {
    /// Returns whether no reply came in time, so the command may still run in Redis.
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Redis(error) => error.is_timeout(),
        }
    }
}

/// Proof that this request owns the right to publish an event.
#[derive(Debug)]
pub struct Claim {
    key: String,
    token: String,
}

/// The result of trying to claim an event.
#[derive(Debug)]
pub enum ClaimOutcome {
    /// This request publishes the event.
    Claimed(Claim),
    /// The event was already published within the dedup window.
    AlreadyDone,
    /// Another request still held the claim when the wait ran out.
    StillPending,
}

/// Dedup store on one shared, self-reconnecting Redis connection.
#[derive(Clone)]
pub struct DedupStore {
    connection: ConnectionManager,
    key_prefix: String,
    pending_ttl: Duration,
    pending_wait: Duration,
    dedup_ttl: Duration,
    response_timeout: Duration,
    mark_done: Script,
    release: Script,
}

impl DedupStore {
    /// Creates the store. The connection opens on first use, so the bridge starts (and
    /// reports not ready) while Redis is down, and reconnects after Redis restarts.
    pub fn new(settings: &RedisSettings) -> Result<Self, redis::RedisError> {
        // Nagle's algorithm would hold back the small command packets of concurrent requests.
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let info = settings
            .url
            .expose()
            .into_connection_info()?
            .set_tcp_settings(tcp);
        let client = Client::open(info)?;
        let connection_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
            .set_response_timeout(Some(settings.response_timeout()))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, connection_config)?;
        Ok(Self {
            connection,
            key_prefix: settings.key_prefix.clone(),
            pending_ttl: Duration::from_millis(settings.pending_ttl_ms),
            pending_wait: Duration::from_millis(settings.pending_wait_ms),
            dedup_ttl: Duration::from_secs(settings.dedup_ttl_secs),
            response_timeout: settings.response_timeout(),
            mark_done: Script::new(MARK_DONE),
            release: Script::new(RELEASE),
        })
    }

    /// Returns the dedup key of an event: `<prefix><task_id>:<status>`.
    pub fn key(&self, event: &Event) -> String {
        format!("{}{}", self.key_prefix, event.id)
    }

    /// Claims `event`, waiting (bounded by `pending_wait_ms`) while another request owns it.
    pub async fn claim(&self, event: &Event) -> Result<ClaimOutcome, DedupError> {
        let key = self.key(event);
        let token = format!("{PENDING_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let deadline = Instant::now() + self.pending_wait;
        loop {
            match self.try_set_pending(&key, &token).await {
                Ok(true) => return Ok(ClaimOutcome::Claimed(Claim { key, token })),
                Ok(false) => {}
                Err(error) => {
                    if error.is_timeout() {
                        self.release_later(Claim { key, token });
                    }
                    return Err(error);
                }
            }
            let current = self.get(&key).await?;
            match current.as_deref() {
                Some(DONE) => return Ok(ClaimOutcome::AlreadyDone),
                // A SET that was retried after a dropped connection may have succeeded the
                // first time, leaving our own token behind.
                Some(value) if value == token => {
                    return Ok(ClaimOutcome::Claimed(Claim { key, token }));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Ok(ClaimOutcome::StillPending);
            }
            // A missing key means the other claim was released or expired in between, so the
            // next SET NX can succeed at once.
            if current.is_some() {
                sleep(PENDING_POLL_INTERVAL).await;
            }
        }
    }

    /// Records a confirmed event for the dedup window.
    pub async fn mark_done(&self, claim: &Claim) -> Result<(), DedupError> {
        let ttl_ms = self.dedup_ttl.as_millis() as u64;
        self.run(|mut connection| async move {
            self.mark_done
                .key(&claim.key)
                .arg(&claim.token)
                .arg(ttl_ms)
                .invoke_async::<i64>(&mut connection)
                .await
        })
        .await?;
        Ok(())
    }

    /// Deletes the claim so that the provider's retry can publish the event.
    pub async fn release(&self, claim: &Claim) -> Result<(), DedupError> {
        self.run(|mut connection| async move {
            self.release
                .key(&claim.key)
                .arg(&claim.token)
                .invoke_async::<i64>(&mut connection)
                .await
        })
        .await?;
        Ok(())
    }

    /// Releases a claim whose SET timed out, in the background. The SET may still run in
    /// Redis, and its leftover would make every retry wait until `pending_ttl_ms` runs out.
    /// The release follows the SET on the same connection, so Redis runs it afterwards.
    fn release_later(&self, claim: Claim) {
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(cause) = store.release(&claim).await {
                warn!(
                    key = claim.key.as_str(), cause:% = cause;
                    "Releasing a claim whose SET timed out failed; re-deliveries wait until it expires."
                );
            }
        });
    }

    /// Checks that Redis replies to a PING within the response timeout.
    pub async fn ping(&self) -> Result<(), DedupError> {
        self.query::<String>(redis::cmd("PING")).await?;
        Ok(())
    }

    async fn try_set_pending(&self, key: &str, token: &str) -> Result<bool, DedupError> {
        let mut command = redis::cmd("SET");
        command
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(self.pending_ttl.as_millis() as u64);
        let reply: Option<String> = self.query(command).await?;
        Ok(reply.is_some())
    }

    async fn get(&self, key: &str) -> Result<Option<String>, DedupError> {
        let mut command = redis::cmd("GET");
        command.arg(key);
        self.query(command).await
    }

    async fn query<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Result<T, DedupError> {
        self.run(|mut connection| {
            let command = &command;
            async move { command.query_async(&mut connection).await }
        })
        .await
    }

    /// Runs `command` within the response timeout, on top of the client's own, so that a
    /// reconnect in progress cannot stretch it. A command that failed because the connection
    /// dropped (Redis restarted, for example) is sent once more on the new connection while
    /// time remains. Every command here is safe to repeat.
    async fn run<'a, T, Command, Reply>(&'a self, command: Command) -> Result<T, DedupError>
    where
        Command: Fn(ConnectionManager) -> Reply,
        Reply: Future<Output = redis::RedisResult<T>> + 'a,
    {
        let deadline = Instant::now() + self.response_timeout;
        let mut retried = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match timeout(remaining, command(self.connection.clone())).await {
                Err(_) => return Err(DedupError::Timeout(self.response_timeout)),
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(error)) if !retried && error.is_connection_dropped() => retried = true,
                Ok(Err(error)) => return Err(error.into()),
            }
        }
    }
}
