//! Layered configuration: built-in defaults, then an optional TOML file, then environment
//! variables prefixed `WEBHOOK_BRIDGE__` with `__` between nested keys. The whole tree is
//! validated at startup, and every error names the offending key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::EventType;
use crate::secret::{SecretUrl, redact_urls_in};

mod auth;
mod kafka;
mod strict;

pub use auth::{AuthSettings, MAX_TIMESTAMP_TOLERANCE_SECS};
pub use kafka::{KafkaOptions, KafkaSettings, delivery_timeout, redact_secrets};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "WEBHOOK_BRIDGE";

/// Paths served by the bridge itself, which the webhook path must not shadow.
const RESERVED_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Upper bound for `server.max_body_bytes`. A callback is a small JSON document, and the event
/// that carries it must stay below the broker's message size limit (16 MiB by default in
/// RabbitMQ 4).
const MAX_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Upper bound for `rabbitmq.channel_pool_size`, well below RabbitMQ's default of 2047
/// channels per connection.
const MAX_CHANNELS: usize = 1024;

/// Upper bound for `server.workers`, the limit of actix-web 4.
const MAX_WORKERS: usize = 512;

/// Upper bound for `server.max_connections`. Each connection takes a file descriptor and a
/// few KiB of buffers.
const MAX_CONNECTIONS: usize = 1_000_000;

/// Upper bound for `server.max_in_flight`. Each request in flight may hold a body of up to
/// `server.max_body_bytes`.
const MAX_IN_FLIGHT: usize = 100_000;

/// Upper bound for every timeout and wait, in milliseconds (one hour). Longer values are
/// mistakes, and would hold a provider's request far past its own timeout.
const MAX_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// Upper bound for the length of `event.source`.
const MAX_EVENT_SOURCE_BYTES: usize = 1024;

/// Upper bound for `redis.dedup_ttl_secs` (one year), well inside what Redis accepts for PX.
const MAX_DEDUP_TTL_SECS: u64 = 365 * 24 * 60 * 60;

/// The complete bridge configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub broker: BrokerSettings,
    pub redis: RedisSettings,
    pub rabbitmq: RabbitMqSettings,
    pub kafka: KafkaSettings,
    pub event: EventSettings,
    pub dead_letter: DeadLetterSettings,
    pub log: LogSettings,
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Socket address to listen on, such as `0.0.0.0:8080`.
    pub listen: String,
    /// Path of the callback endpoint.
    pub webhook_path: String,
    /// Largest accepted request body in bytes, counted on the bytes received.
    #[serde(deserialize_with = "strict::whole_number")]
    pub max_body_bytes: usize,
    /// Number of HTTP worker threads; 0 means one per CPU core.
    #[serde(deserialize_with = "strict::whole_number")]
    pub workers: usize,
    /// Time allowed to read the request head before the connection is closed (408).
    #[serde(deserialize_with = "strict::whole_number")]
    pub client_request_timeout_ms: u64,
    /// Time allowed to read the request body, from the end of the head (408 when exceeded).
    #[serde(deserialize_with = "strict::whole_number")]
    pub body_read_timeout_ms: u64,
    /// Time an idle keep-alive connection stays open after a response; 0 (the default) closes
    /// every connection after its first response. actix-web 4 applies
    /// `client_request_timeout_ms` only to the first request head of a connection, so with
    /// keep-alive a client can send the next head as slowly as it likes.
    #[serde(deserialize_with = "strict::whole_number")]
    pub keep_alive_ms: u64,
    /// Most client connections open at once, over all workers. actix-web counts connections
    /// per worker, so each worker gets this divided by the worker count, rounded down. A
    /// worker at its share stops accepting, and new connections wait in the listen backlog.
    #[serde(deserialize_with = "strict::whole_number")]
    pub max_connections: usize,
    /// Most callback requests handled at once, from the start of the body to the broker's
    /// confirmation. Requests beyond it get 503 `overloaded` at once.
    #[serde(deserialize_with = "strict::whole_number")]
    pub max_in_flight: usize,
    /// On SIGTERM or SIGINT, how long in-flight requests may take to finish.
    #[serde(deserialize_with = "strict::whole_number")]
    pub shutdown_timeout_secs: u64,
    /// Value of the `Retry-After` header on 503 responses, in seconds.
    #[serde(deserialize_with = "strict::whole_number")]
    pub retry_after_secs: u64,
    /// Whether to log one line per request (method, path without query string, status).
    #[serde(deserialize_with = "strict::boolean")]
    pub access_log: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            webhook_path: "/webhook".to_owned(),
            max_body_bytes: 256 * 1024,
            workers: 0,
            client_request_timeout_ms: 5_000,
            body_read_timeout_ms: 10_000,
            keep_alive_ms: 0,
            max_connections: 10_000,
            max_in_flight: 1024,
            shutdown_timeout_secs: 30,
            retry_after_secs: 5,
            access_log: true,
        }
    }
}

/// Message broker that receives the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum BrokerKind {
    #[default]
    Rabbitmq,
    Kafka,
}

impl BrokerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rabbitmq => "rabbitmq",
            Self::Kafka => "kafka",
        }
    }
}

impl TryFrom<String> for BrokerKind {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "rabbitmq" => Ok(Self::Rabbitmq),
            "kafka" => Ok(Self::Kafka),
            other => Err(format!(
                "expected \"rabbitmq\" or \"kafka\", not \"{other}\""
            )),
        }
    }
}

/// Settings shared by every broker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// The broker that events are published to.
    pub kind: BrokerKind,
    /// How long a publish may take, confirmation included, before it counts as failed.
    #[serde(deserialize_with = "strict::whole_number")]
    pub publish_timeout_ms: u64,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Rabbitmq,
            publish_timeout_ms: 5_000,
        }
    }
}

impl BrokerSettings {
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}

/// Policy for a callback when Redis cannot be reached in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum OnRedisUnavailable {
    /// Respond 503 so that the provider retries later.
    #[default]
    Reject,
    /// Publish without deduplication, so duplicates become possible but nothing waits.
    Publish,
}

impl TryFrom<String> for OnRedisUnavailable {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "reject" => Ok(Self::Reject),
            "publish" => Ok(Self::Publish),
            other => Err(format!(
                "expected \"reject\" or \"publish\", not \"{other}\""
            )),
        }
    }
}

/// Redis settings for deduplication.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Connection URL, `redis://[:password@]host:port[/db]` or `rediss://` for TLS.
    pub url: SecretUrl,
    /// Prefix of every dedup key; the key is `<prefix><task_id>:<status>`.
    pub key_prefix: String,
    /// Time allowed to open a connection.
    #[serde(deserialize_with = "strict::whole_number")]
    pub connect_timeout_ms: u64,
    /// Time allowed for one Redis command, round trip included.
    #[serde(deserialize_with = "strict::whole_number")]
    pub response_timeout_ms: u64,
    /// Lifetime of a claim while its event is being published; covers a crashed bridge.
    #[serde(deserialize_with = "strict::whole_number")]
    pub pending_ttl_ms: u64,
    /// Maximum time a re-delivery waits for a concurrent request that owns the claim.
    #[serde(deserialize_with = "strict::whole_number")]
    pub pending_wait_ms: u64,
    /// Lifetime of the record of a published event: the dedup window.
    #[serde(deserialize_with = "strict::whole_number")]
    pub dedup_ttl_secs: u64,
    /// Behaviour when Redis is down or too slow: `reject` (503) or `publish` (no dedup).
    pub on_unavailable: OnRedisUnavailable,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: SecretUrl::new_unchecked("redis://127.0.0.1:6379"),
            key_prefix: "webhook-bridge:dedup:".to_owned(),
            connect_timeout_ms: 1_000,
            response_timeout_ms: 1_000,
            pending_ttl_ms: 30_000,
            pending_wait_ms: 5_000,
            dedup_ttl_secs: 24 * 60 * 60,
            on_unavailable: OnRedisUnavailable::Reject,
        }
    }
}

/// RabbitMQ settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqSettings {
    /// AMQP URL, `amqp://user:password@host:port/vhost` (vhost `/` is written `%2f`).
    pub url: SecretUrl,
    /// Durable topic exchange that events are published to.
    pub exchange: String,
    /// Whether to declare the exchange at connection time.
    #[serde(deserialize_with = "strict::boolean")]
    pub declare_exchange: bool,
    /// Whether to declare the durable queues (`queue_invalid` only with dead letters on) and
    /// bind them to the exchange.
    #[serde(deserialize_with = "strict::boolean")]
    pub declare_queues: bool,
    /// Queue bound to routing key `task.completed`.
    pub queue_completed: String,
    /// Queue bound to routing key `task.failed`.
    pub queue_failed: String,
    /// Routing key of dead letters: rejected callbacks kept for inspection.
    pub dead_letter_routing_key: String,
    /// Queue bound to `dead_letter_routing_key`.
    pub queue_invalid: String,
    /// `app_id` property of every published message.
    pub app_id: String,
    /// Time allowed to connect, open the channel and declare the topology.
    #[serde(deserialize_with = "strict::whole_number")]
    pub connect_timeout_ms: u64,
    /// Number of confirm-mode channels that publish in parallel, one event each at a time.
    #[serde(deserialize_with = "strict::whole_number")]
    pub channel_pool_size: usize,
    /// AMQP heartbeat interval proposed to the broker, in seconds; a `heartbeat` parameter in
    /// the URL takes precedence. A silent broker is detected after about two intervals.
    #[serde(deserialize_with = "strict::whole_number")]
    pub heartbeat_secs: u16,
    /// First delay between reconnection attempts; it doubles up to the maximum.
    #[serde(deserialize_with = "strict::whole_number")]
    pub reconnect_min_delay_ms: u64,
    /// Largest delay between reconnection attempts.
    #[serde(deserialize_with = "strict::whole_number")]
    pub reconnect_max_delay_ms: u64,
}

impl Default for RabbitMqSettings {
    fn default() -> Self {
        Self {
            url: SecretUrl::new_unchecked("amqp://guest:guest@127.0.0.1:5672/%2f"),
            exchange: "tasks".to_owned(),
            declare_exchange: true,
            declare_queues: true,
            queue_completed: "task.completed".to_owned(),
            queue_failed: "task.failed".to_owned(),
            dead_letter_routing_key: "task.invalid".to_owned(),
            queue_invalid: "task.invalid".to_owned(),
            app_id: "webhook-bridge".to_owned(),
            connect_timeout_ms: 5_000,
            channel_pool_size: 64,
            heartbeat_secs: 10,
            reconnect_min_delay_ms: 100,
            reconnect_max_delay_ms: 10_000,
        }
    }
}

/// CloudEvents attributes set by the bridge.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSettings {
    /// The CloudEvents `source` attribute, a URI reference naming this bridge.
    pub source: String,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            source: "webhook-bridge".to_owned(),
        }
    }
}

/// Dead letters: callbacks rejected with 400 or 422 after authentication, published with the
/// reason to `rabbitmq.dead_letter_routing_key` or `kafka.topic_invalid`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetterSettings {
    /// Whether rejected callbacks are published as dead letters.
    #[serde(deserialize_with = "strict::boolean")]
    pub enabled: bool,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Layout of the log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    /// `[time LEVEL target] message key=value ...`, for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("expected \"text\" or \"json\", not \"{other}\"")),
        }
    }
}

/// Logging settings. Levels come from `RUST_LOG`, not from here.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Layout of each line: `text` or `json`.
    pub format: LogFormat,
}

/// A configuration error that names the key at fault, or the file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    /// Dotted key such as `server.listen`, or `--config` for the file itself.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn file(message: impl Into<String>) -> Self {
        Self::new("--config", message)
    }
}

impl Settings {
    /// Loads the configuration from the defaults, the optional file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Some(bridge_variables(std::env::vars_os())?))
    }

    /// Loads the configuration with `environment` in place of the process environment.
    pub fn load_from(
        file: Option<&Path>,
        environment: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let environment = environment.unwrap_or_default();
        check_variable_names(&environment)?;

        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::file(format!(
                    "file {} not found",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }

        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(Some(environment));
        let layered = builder
            .add_source(environment)
            .build()
            .map_err(|error| ConfigError::file(redact_urls_in(&error.to_string())))?;

        let settings: Settings = serde_path_to_error::deserialize(layered).map_err(|error| {
            let key = error.path().to_string();
            ConfigError::new(&key, redact_urls_in(&error.into_inner().to_string()))
        })?;

        settings.validate()?;
        Ok(settings)
    }

    /// Checks the values that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.auth.validate()?;
        require_duration_ms("broker.publish_timeout_ms", self.broker.publish_timeout_ms)?;

        // A stop that cuts a request short mid-publish leaves its claim behind until it expires.
        let longest_request = self.redis.pending_wait_ms
            + self.broker.publish_timeout_ms
            + 3 * self.redis.response_timeout_ms;
        if self.server.shutdown_timeout_secs.saturating_mul(1000) < longest_request {
            return Err(ConfigError::new(
                "server.shutdown_timeout_secs",
                format!(
                    "must cover the longest request, redis.pending_wait_ms + broker.publish_timeout_ms + 3 × redis.response_timeout_ms ({longest_request} ms)"
                ),
            ));
        }
        self.redis.validate(&self.broker)?;
        // Both sections are checked, so that a mistake surfaces before a switch of broker.
        self.rabbitmq.validate()?;
        self.kafka.validate(self.broker.publish_timeout_ms)?;
        if self.broker.kind == BrokerKind::Kafka {
            self.kafka.check_body_fits(self.server.max_body_bytes)?;
        }
        let source = &self.event.source;
        if source.is_empty() || source.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new(
                "event.source",
                "must be a non-empty URI reference without spaces, such as urn:acme:video-provider",
            ));
        }

        // Every event carries the source twice on Kafka (document and header), within the
        // room that the Kafka message size check leaves for the envelope.
        if source.len() > MAX_EVENT_SOURCE_BYTES {
            return Err(ConfigError::new(
                "event.source",
                format!("must be at most {MAX_EVENT_SOURCE_BYTES} bytes long"),
            ));
        }
        Ok(())
    }

    /// Renders the configuration as one line of JSON with every secret redacted.
    pub fn to_redacted_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|error| format!("<unprintable: {error}>"))
    }
}

/// Collects the variables whose names start with `WEBHOOK_BRIDGE` in any case. Other
/// variables are skipped unread, so one that is not valid Unicode cannot stop the bridge.
pub fn bridge_variables(
    variables: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut selected = HashMap::new();
    for (name, value) in variables {
        let Some(name) = name.to_str() else {
            continue;
        };

        if !name.to_uppercase().starts_with(ENV_PREFIX) {
            continue;
        }

        let Some(value) = value.to_str() else {
            return Err(ConfigError::new(
                name,
                "the value of this environment variable is not valid UTF-8",
            ));
        };

        selected.insert(name.to_owned(), value.to_owned());
    }
    Ok(selected)
}

/// Rejects variable names that the config crate would misread or drop without a word. One
/// kind lacks the double underscore after the prefix (`WEBHOOK_BRIDGE_REDIS__URL`). The
/// other names a whole section (`WEBHOOK_BRIDGE__REDIS=...`), and the config crate drops it
/// when a key of the section is also set.
fn check_variable_names(environment: &HashMap<String, String>) -> Result<(), ConfigError> {
    let prefix = format!("{ENV_PREFIX}__");
    for name in environment.keys() {
        let upper = name.to_uppercase();
        if !upper.starts_with(ENV_PREFIX) {
            continue;
        }

        let Some(key) = upper.strip_prefix(&prefix) else {
            return Err(ConfigError::new(
                name,
                format!("bridge settings start with {prefix} (two underscores after the prefix)"),
            ));
        };

        if !key.contains("__") {
            return Err(ConfigError::new(
                &key.to_lowercase(),
                format!(
                    "{name} sets a whole section; set one key of it instead, such as {prefix}{key}__URL"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that a duration setting lies between 1 and [`MAX_TIMEOUT_MS`] milliseconds.
fn require_duration_ms(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 || value > MAX_TIMEOUT_MS {
        return Err(ConfigError::new(
            key,
            format!("must be between 1 and {MAX_TIMEOUT_MS} milliseconds"),
        ));
    }
    Ok(())
}

impl ServerSettings {
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::new(
                "server.listen",
                format!(
                    "`{}` is not a socket address such as 0.0.0.0:8080",
                    self.listen
                ),
            )
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        let path = &self.webhook_path;
        if !path.starts_with('/') || path.len() < 2 {
            return Err(ConfigError::new(
                "server.webhook_path",
                format!("`{path}` must start with `/` and name a path, such as /webhook"),
            ));
        }

        // actix-web matches the decoded path against a pattern, so percent escapes, braces
        // and `*` would never match the way they read.
        let plain = path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '.' | '_' | '~'));
        if !plain || path.contains("//") {
            return Err(ConfigError::new(
                "server.webhook_path",
                format!("`{path}` may contain only letters, digits, `/`, `-`, `.`, `_` and `~`"),
            ));
        }

        if RESERVED_PATHS.contains(&path.as_str()) {
            return Err(ConfigError::new(
                "server.webhook_path",
                format!("`{path}` is reserved for health checks and metrics"),
            ));
        }

        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_LIMIT {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                format!("must be between 1 and {MAX_BODY_LIMIT}"),
            ));
        }

        require_duration_ms(
            "server.retry_after_secs",
            self.retry_after_secs.saturating_mul(1000),
        )?;

        require_duration_ms(
            "server.client_request_timeout_ms",
            self.client_request_timeout_ms,
        )?;

        require_duration_ms("server.body_read_timeout_ms", self.body_read_timeout_ms)?;
        require_duration_ms(
            "server.shutdown_timeout_secs",
            self.shutdown_timeout_secs.saturating_mul(1000),
        )?;

        if self.workers > MAX_WORKERS {
            return Err(ConfigError::new(
                "server.workers",
                format!("must be between 0 (one per CPU core) and {MAX_WORKERS}"),
            ));
        }

        if self.keep_alive_ms > MAX_TIMEOUT_MS {
            return Err(ConfigError::new(
                "server.keep_alive_ms",
                format!("must be between 0 (no keep-alive) and {MAX_TIMEOUT_MS} milliseconds"),
            ));
        }
        self.validate_caps()
    }

    fn validate_caps(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS {
            return Err(ConfigError::new(
                "server.max_connections",
                format!("must be between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        if self.max_connections < self.workers {
            return Err(ConfigError::new(
                "server.max_connections",
                format!(
                    "must be at least server.workers ({}), because each worker accepts at least one connection",
                    self.workers
                ),
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT {
            return Err(ConfigError::new(
                "server.max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT}"),
            ));
        }
        Ok(())
    }

    /// Returns the number of HTTP workers: `workers`, or for 0 the number that actix-web
    /// starts, one per available CPU core.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism()
            .map_or(2, std::num::NonZeroUsize::get)
            .min(MAX_WORKERS)
    }

    /// Returns each worker's share of `max_connections` for `workers` workers, at least one.
    pub fn connections_per_worker(&self, workers: usize) -> usize {
        (self.max_connections / workers.max(1)).max(1)
    }
}

impl RedisSettings {
    fn validate(&self, broker: &BrokerSettings) -> Result<(), ConfigError> {
        self.url
            .require_scheme(&["redis", "rediss"])
            .map_err(|message| ConfigError::new("redis.url", message))?;
        if let Err(error) = redis::Client::open(self.url.expose()) {
            return Err(ConfigError::new(
                "redis.url",
                format!(
                    "`{}` is invalid: {}",
                    self.url,
                    redact_urls_in(&error.to_string())
                ),
            ));
        }

        if self.key_prefix.is_empty() {
            return Err(ConfigError::new(
                "redis.key_prefix",
                "must not be empty, so that dedup keys cannot collide with other data",
            ));
        }

        require_duration_ms("redis.connect_timeout_ms", self.connect_timeout_ms)?;
        require_duration_ms("redis.response_timeout_ms", self.response_timeout_ms)?;
        require_duration_ms("redis.pending_wait_ms", self.pending_wait_ms)?;
        require_duration_ms("redis.pending_ttl_ms", self.pending_ttl_ms)?;
        if self.dedup_ttl_secs == 0 || self.dedup_ttl_secs > MAX_DEDUP_TTL_SECS {
            return Err(ConfigError::new(
                "redis.dedup_ttl_secs",
                format!("must be between 1 and {MAX_DEDUP_TTL_SECS} seconds (one year)"),
            ));
        }

        // A claim that expires while its publish is still running would let a re-delivery
        // publish the same event a second time. Between the SET and the done record there are
        // up to three Redis commands (SET retried once, GET) and the publish.
        let claim_lifetime = broker.publish_timeout_ms + 3 * self.response_timeout_ms;
        if self.pending_ttl_ms <= claim_lifetime {
            return Err(ConfigError::new(
                "redis.pending_ttl_ms",
                format!(
                    "must be greater than broker.publish_timeout_ms + 3 × redis.response_timeout_ms ({claim_lifetime} ms)"
                ),
            ));
        }
        Ok(())
    }

    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
}

impl RabbitMqSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.url
            .require_scheme(&["amqp", "amqps"])
            .map_err(|message| ConfigError::new("rabbitmq.url", message))?;
        if let Err(error) = self.url.expose().parse::<lapin::uri::AMQPUri>() {
            return Err(ConfigError::new(
                "rabbitmq.url",
                format!("`{}` is invalid: {}", self.url, redact_urls_in(&error)),
            ));
        }

        for (key, value) in [
            ("rabbitmq.exchange", &self.exchange),
            ("rabbitmq.queue_completed", &self.queue_completed),
            ("rabbitmq.queue_failed", &self.queue_failed),
            (
                "rabbitmq.dead_letter_routing_key",
                &self.dead_letter_routing_key,
            ),
            ("rabbitmq.queue_invalid", &self.queue_invalid),
            ("rabbitmq.app_id", &self.app_id),
        ] {
            // AMQP 0-9-1 short strings carry at most 255 bytes.
            if value.is_empty() || value.len() > 255 {
                return Err(ConfigError::new(key, "must be 1 to 255 bytes long"));
            }
        }

        if self.exchange.starts_with("amq.") && self.declare_exchange {
            return Err(ConfigError::new(
                "rabbitmq.exchange",
                "names starting with `amq.` are reserved by the broker; set declare_exchange = false to use one",
            ));
        }

        for (key, queue) in [
            ("rabbitmq.queue_completed", &self.queue_completed),
            ("rabbitmq.queue_failed", &self.queue_failed),
            ("rabbitmq.queue_invalid", &self.queue_invalid),
        ] {
            if self.declare_queues && queue.starts_with("amq.") {
                return Err(ConfigError::new(
                    key,
                    format!("`{queue}` starts with `amq.`, a prefix reserved by the broker"),
                ));
            }
        }

        if self.queue_completed == self.queue_failed {
            return Err(ConfigError::new(
                "rabbitmq.queue_failed",
                "must differ from rabbitmq.queue_completed",
            ));
        }
        if self.queue_invalid == self.queue_completed || self.queue_invalid == self.queue_failed {
            return Err(ConfigError::new(
                "rabbitmq.queue_invalid",
                "must differ from rabbitmq.queue_completed and rabbitmq.queue_failed",
            ));
        }
        // A dead letter routed like an event would reach the consumers of valid events.
        if [EventType::TaskCompleted, EventType::TaskFailed]
            .iter()
            .any(|event_type| event_type.as_str() == self.dead_letter_routing_key)
        {
            return Err(ConfigError::new(
                "rabbitmq.dead_letter_routing_key",
                "must differ from the routing keys of events, task.completed and task.failed",
            ));
        }

        require_duration_ms("rabbitmq.connect_timeout_ms", self.connect_timeout_ms)?;
        if self.channel_pool_size == 0 || self.channel_pool_size > MAX_CHANNELS {
            return Err(ConfigError::new(
                "rabbitmq.channel_pool_size",
                format!("must be between 1 and {MAX_CHANNELS}"),
            ));
        }

        if self.heartbeat_secs == 0 {
            return Err(ConfigError::new(
                "rabbitmq.heartbeat_secs",
                "must be greater than 0, so that a silent broker is detected",
            ));
        }

        require_duration_ms(
            "rabbitmq.reconnect_min_delay_ms",
            self.reconnect_min_delay_ms,
        )?;

        require_duration_ms(
            "rabbitmq.reconnect_max_delay_ms",
            self.reconnect_max_delay_ms,
        )?;

        if self.reconnect_max_delay_ms < self.reconnect_min_delay_ms {
            return Err(ConfigError::new(
                "rabbitmq.reconnect_max_delay_ms",
                "must not be less than rabbitmq.reconnect_min_delay_ms",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let environment = pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        Settings::load_from(None, Some(environment))
    }

    #[test]
    fn defaults_are_valid() {
        let settings = load_env(&[]).expect("defaults load");
        assert_eq!(settings.server.webhook_path, "/webhook");
        assert_eq!(settings.server.max_body_bytes, 256 * 1024);
        assert_eq!(settings.redis.dedup_ttl_secs, 86_400);
        assert_eq!(settings.rabbitmq.exchange, "tasks");
        assert_eq!(settings.broker.kind, BrokerKind::Rabbitmq);
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let settings = load_env(&[
            ("WEBHOOK_BRIDGE__SERVER__LISTEN", "0.0.0.0:9000"),
            ("WEBHOOK_BRIDGE__REDIS__KEY_PREFIX", "bridge:"),
            ("WEBHOOK_BRIDGE__RABBITMQ__EXCHANGE", "media"),
            ("WEBHOOK_BRIDGE__SERVER__MAX_BODY_BYTES", "1024"),
            ("WEBHOOK_BRIDGE__REDIS__ON_UNAVAILABLE", "publish"),
        ])
        .expect("overrides load");
        assert_eq!(settings.server.listen, "0.0.0.0:9000");
        assert_eq!(settings.redis.key_prefix, "bridge:");
        assert_eq!(settings.rabbitmq.exchange, "media");
        assert_eq!(settings.server.max_body_bytes, 1024);
        assert_eq!(settings.redis.on_unavailable, OnRedisUnavailable::Publish);
    }

    #[test]
    fn numeric_looking_strings_stay_strings() {
        for prefix in ["42", "007", "1e3", "1.50", "true"] {
            let settings = load_env(&[("WEBHOOK_BRIDGE__REDIS__KEY_PREFIX", prefix)]).unwrap();
            assert_eq!(settings.redis.key_prefix, prefix);
        }

        let settings = load_env(&[("WEBHOOK_BRIDGE__RABBITMQ__EXCHANGE", "1.0")]).unwrap();
        assert_eq!(settings.rabbitmq.exchange, "1.0");
    }

    #[test]
    fn fractional_number_is_rejected() {
        let error = load_env(&[("WEBHOOK_BRIDGE__SERVER__MAX_BODY_BYTES", "1.5")]).unwrap_err();
        assert_eq!(error.key, "server.max_body_bytes");
    }

    #[test]
    fn booleans_parse_from_environment() {
        let settings = load_env(&[("WEBHOOK_BRIDGE__RABBITMQ__DECLARE_QUEUES", "false")]).unwrap();
        assert!(!settings.rabbitmq.declare_queues);
    }

    #[test]
    fn section_variable_is_rejected_without_value() {
        let error = load_env(&[
            ("WEBHOOK_BRIDGE__REDIS", "redis://:hunter2@cache:6379"),
            ("WEBHOOK_BRIDGE__REDIS__KEY_PREFIX", "p:"),
        ])
        .unwrap_err();
        assert_eq!(error.key, "redis");
        assert!(
            error.message.contains("WEBHOOK_BRIDGE__REDIS__URL"),
            "{error}"
        );

        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn section_as_string_in_file_hides_password() {
        let path = write_temp_file("redis = \"redis://:hunter2@cache:6379\"\n");
        let error = Settings::load_from(Some(&path), Some(HashMap::new())).unwrap_err();
        assert_eq!(error.key, "redis");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn toml_syntax_error_hides_password() {
        let path = write_temp_file("[rabbitmq]\nurl = \"amqp://app:hunter2@mq:5672/%2f\n");
        let error = Settings::load_from(Some(&path), Some(HashMap::new())).unwrap_err();
        assert_eq!(error.key, "--config");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let cases = [
            ("SERVER__WORKERS", "100000", "server.workers"),
            (
                "SERVER__SHUTDOWN_TIMEOUT_SECS",
                "0",
                "server.shutdown_timeout_secs",
            ),
            (
                "BROKER__PUBLISH_TIMEOUT_MS",
                "18446744073709551615",
                "broker.publish_timeout_ms",
            ),
            (
                "REDIS__DEDUP_TTL_SECS",
                "18446744073709551615",
                "redis.dedup_ttl_secs",
            ),
            (
                "SERVER__CLIENT_REQUEST_TIMEOUT_MS",
                "0",
                "server.client_request_timeout_ms",
            ),
            ("REDIS__URL", "redis://cache:1/notanumber", "redis.url"),
            (
                "RABBITMQ__URL",
                "amqp://mq:5672/%2f?heartbeat=abc",
                "rabbitmq.url",
            ),
        ];
        for (name, value, key) in cases {
            let name = format!("WEBHOOK_BRIDGE__{name}");
            let error = load_env(&[(name.as_str(), value)]).unwrap_err();
            assert_eq!(error.key, key, "{name}={value}: {error}");
        }
    }

    #[test]
    fn connection_and_request_caps_are_checked() {
        let defaults = load_env(&[]).unwrap();
        assert_eq!(defaults.server.max_connections, 10_000);
        assert_eq!(defaults.server.max_in_flight, 1024);
        assert_eq!(defaults.server.keep_alive_ms, 0);

        let cases = [
            (
                "SERVER__MAX_CONNECTIONS",
                "0",
                "must be between 1 and 1000000",
            ),
            (
                "SERVER__MAX_CONNECTIONS",
                "1000001",
                "must be between 1 and 1000000",
            ),
            ("SERVER__MAX_IN_FLIGHT", "0", "must be between 1 and 100000"),
            (
                "SERVER__MAX_IN_FLIGHT",
                "100001",
                "must be between 1 and 100000",
            ),
            ("SERVER__MAX_IN_FLIGHT", "-1", "invalid value"),
            ("SERVER__KEEP_ALIVE_MS", "3600001", "0 (no keep-alive)"),
            ("SERVER__KEEP_ALIVE_MS", "1.5", "expected a whole number"),
        ];
        for (name, value, message) in cases {
            let name = format!("WEBHOOK_BRIDGE__{name}");
            let error = load_env(&[(name.as_str(), value)]).unwrap_err();
            let key = name
                .trim_start_matches("WEBHOOK_BRIDGE__")
                .replace("__", ".");
            assert_eq!(error.key, key.to_lowercase(), "{name}={value}: {error}");
            assert!(error.message.contains(message), "{name}={value}: {error}");
        }

        let error = load_env(&[
            ("WEBHOOK_BRIDGE__SERVER__WORKERS", "8"),
            ("WEBHOOK_BRIDGE__SERVER__MAX_CONNECTIONS", "7"),
        ])
        .unwrap_err();
        assert_eq!(error.key, "server.max_connections");
        assert!(error.message.contains("server.workers (8)"), "{error}");

        let settings = load_env(&[
            ("WEBHOOK_BRIDGE__SERVER__KEEP_ALIVE_MS", "2000"),
            ("WEBHOOK_BRIDGE__SERVER__MAX_CONNECTIONS", "1"),
            ("WEBHOOK_BRIDGE__SERVER__MAX_IN_FLIGHT", "1"),
        ])
        .unwrap();
        assert_eq!(settings.server.keep_alive_ms, 2_000);
        assert_eq!(settings.server.max_in_flight, 1);
    }

    #[test]
    fn connections_are_shared_among_workers() {
        let server = ServerSettings {
            max_connections: 10_000,
            ..ServerSettings::default()
        };
        assert_eq!(server.connections_per_worker(1), 10_000);
        assert_eq!(server.connections_per_worker(3), 3_333);
        assert_eq!(server.connections_per_worker(0), 10_000);
        let few = ServerSettings {
            max_connections: 2,
            ..ServerSettings::default()
        };
        assert_eq!(few.connections_per_worker(4), 1);
        let fixed = ServerSettings {
            workers: 6,
            ..ServerSettings::default()
        };
        assert_eq!(fixed.worker_count(), 6);
        assert!(ServerSettings::default().worker_count() >= 1);
    }

    #[test]
    fn converted_values_are_rejected() {
        let path = write_temp_file("[server]\nmax_body_bytes = 1.7\n");
        let error = Settings::load_from(Some(&path), Some(HashMap::new())).unwrap_err();
        assert_eq!(error.key, "server.max_body_bytes");

        let path = write_temp_file("[server]\nworkers = true\n");
        let error = Settings::load_from(Some(&path), Some(HashMap::new())).unwrap_err();
        assert_eq!(error.key, "server.workers");

        let path = write_temp_file("[rabbitmq]\ndeclare_queues = 0\n");
        let error = Settings::load_from(Some(&path), Some(HashMap::new())).unwrap_err();
        assert_eq!(error.key, "rabbitmq.declare_queues");

        let cases = [
            ("SERVER__WORKERS", "yes", "server.workers"),
            ("SERVER__RETRY_AFTER_SECS", "-5", "server.retry_after_secs"),
            (
                "BROKER__PUBLISH_TIMEOUT_MS",
                "4999.6",
                "broker.publish_timeout_ms",
            ),
            ("RABBITMQ__DECLARE_QUEUES", "no", "rabbitmq.declare_queues"),
        ];
        for (name, value, key) in cases {
            let name = format!("WEBHOOK_BRIDGE__{name}");
            let error = load_env(&[(name.as_str(), value)]).unwrap_err();
            assert_eq!(error.key, key, "{name}={value}: {error}");
        }
    }

    #[test]
    fn integers_from_file_are_read() {
        let path = write_temp_file("[server]\nworkers = 3\naccess_log = false\n");
        let settings = Settings::load_from(Some(&path), Some(HashMap::new())).unwrap();
        assert_eq!(settings.server.workers, 3);
        assert!(!settings.server.access_log);
    }

    #[test]
    fn misspelled_prefix_is_rejected() {
        let error = load_env(&[("WEBHOOK_BRIDGE_REDIS__DEDUP_TTL_SECS", "60")]).unwrap_err();
        assert_eq!(error.key, "WEBHOOK_BRIDGE_REDIS__DEDUP_TTL_SECS");
        assert!(error.message.contains("two underscores"), "{error}");
    }

    #[test]
    fn lowercase_section_variable_is_rejected() {
        let error = load_env(&[
            ("webhook_bridge__rabbitmq", "amqp://x"),
            ("WEBHOOK_BRIDGE__RABBITMQ__EXCHANGE", "e"),
        ])
        .unwrap_err();
        assert_eq!(error.key, "rabbitmq");
    }

    #[test]
    fn foreign_variables_are_skipped_unread() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;

        let variables = vec![
            (OsString::from("UNRELATED"), OsString::from_vec(vec![0xff])),
            (
                OsString::from("WEBHOOK_BRIDGE__REDIS__KEY_PREFIX"),
                OsString::from("p:"),
            ),
        ];
        let selected = bridge_variables(variables.into_iter()).unwrap();
        assert_eq!(selected.len(), 1);

        let invalid = vec![(
            OsString::from("WEBHOOK_BRIDGE__REDIS__KEY_PREFIX"),
            OsString::from_vec(vec![0xff]),
        )];
        let error = bridge_variables(invalid.into_iter()).unwrap_err();
        assert_eq!(error.key, "WEBHOOK_BRIDGE__REDIS__KEY_PREFIX");
    }

    #[test]
    fn odd_webhook_paths_are_rejected() {
        for path in [
            "/web%20hook",
            "/hooks/*",
            "/a b",
            "/x?y",
            "//double",
            "/{id}",
        ] {
            let error = load_env(&[("WEBHOOK_BRIDGE__SERVER__WEBHOOK_PATH", path)]).unwrap_err();
            assert_eq!(error.key, "server.webhook_path", "{path}");
        }

        let settings = load_env(&[(
            "WEBHOOK_BRIDGE__SERVER__WEBHOOK_PATH",
            "/hooks/media-v1.2_x~",
        )])
        .unwrap();
        assert_eq!(settings.server.webhook_path, "/hooks/media-v1.2_x~");
    }

    #[test]
    fn reserved_queue_names_are_rejected() {
        let error =
            load_env(&[("WEBHOOK_BRIDGE__RABBITMQ__QUEUE_FAILED", "amq.failed")]).unwrap_err();
        assert_eq!(error.key, "rabbitmq.queue_failed");
        assert!(error.message.contains("amq.failed"), "{error}");
    }

    #[test]
    fn dead_letter_destinations_must_differ_from_event_ones() {
        let cases = [
            (
                "WEBHOOK_BRIDGE__RABBITMQ__QUEUE_INVALID",
                "task.failed",
                "rabbitmq.queue_invalid",
            ),
            (
                "WEBHOOK_BRIDGE__RABBITMQ__DEAD_LETTER_ROUTING_KEY",
                "task.completed",
                "rabbitmq.dead_letter_routing_key",
            ),
            (
                "WEBHOOK_BRIDGE__KAFKA__TOPIC_INVALID",
                "task.completed",
                "kafka.topic_invalid",
            ),
            (
                "WEBHOOK_BRIDGE__KAFKA__TOPIC_INVALID",
                "bad topic",
                "kafka.topic_invalid",
            ),
            (
                "WEBHOOK_BRIDGE__RABBITMQ__QUEUE_INVALID",
                "amq.invalid",
                "rabbitmq.queue_invalid",
            ),
        ];
        for (variable, value, key) in cases {
            let error = load_env(&[(variable, value)]).unwrap_err();
            assert_eq!(error.key, key, "{variable}={value}");
        }

        let settings = load_env(&[("WEBHOOK_BRIDGE__DEAD_LETTER__ENABLED", "false")]).unwrap();
        assert!(!settings.dead_letter.enabled);
        assert!(Settings::default().dead_letter.enabled);
    }

    #[test]
    fn event_source_must_be_uri_reference() {
        let error = load_env(&[("WEBHOOK_BRIDGE__EVENT__SOURCE", "not a uri")]).unwrap_err();
        assert_eq!(error.key, "event.source");

        let long = format!("urn:{}", "a".repeat(1021));
        let error = load_env(&[("WEBHOOK_BRIDGE__EVENT__SOURCE", &long)]).unwrap_err();
        assert_eq!(error.key, "event.source");
        assert!(load_env(&[("WEBHOOK_BRIDGE__EVENT__SOURCE", &long[..1024])]).is_ok());
    }

    #[test]
    fn unknown_variant_lists_choices() {
        let error = load_env(&[("WEBHOOK_BRIDGE__REDIS__ON_UNAVAILABLE", "Publish")]).unwrap_err();
        assert_eq!(error.key, "redis.on_unavailable");
        assert!(error.message.contains("reject"), "{error}");
    }

    #[test]
    fn log_format_defaults_to_text() {
        let settings = load_env(&[]).unwrap();
        assert_eq!(settings.log.format, LogFormat::Text);

        let settings = load_env(&[("WEBHOOK_BRIDGE__LOG__FORMAT", "json")]).unwrap();
        assert_eq!(settings.log.format, LogFormat::Json);
    }

    #[test]
    fn log_format_rejects_unknown_values() {
        let error = load_env(&[("WEBHOOK_BRIDGE__LOG__FORMAT", "logfmt")]).unwrap_err();
        assert_eq!(error.key, "log.format");
        assert!(error.message.contains("\"text\" or \"json\""), "{error}");

        let error = load_env(&[("WEBHOOK_BRIDGE__LOG__LEVEL", "debug")]).unwrap_err();
        assert_eq!(error.key, "log.level");
        assert!(error.message.contains("unknown field"), "{error}");
    }

    #[test]
    fn unknown_key_is_named() {
        let error = load_env(&[("WEBHOOK_BRIDGE__REDIS__URLL", "redis://x")]).unwrap_err();
        assert_eq!(error.key, "redis.urll");
        assert!(error.message.contains("unknown field"), "{error}");
    }

    #[test]
    fn invalid_value_is_named() {
        let error = load_env(&[("WEBHOOK_BRIDGE__SERVER__MAX_BODY_BYTES", "lots")]).unwrap_err();
        assert_eq!(error.key, "server.max_body_bytes");

        let error = load_env(&[("WEBHOOK_BRIDGE__BROKER__KIND", "mqtt")]).unwrap_err();
        assert_eq!(error.key, "broker.kind");

        let error = load_env(&[("WEBHOOK_BRIDGE__SERVER__LISTEN", "localhost")]).unwrap_err();
        assert_eq!(error.key, "server.listen");

        let error = load_env(&[("WEBHOOK_BRIDGE__RABBITMQ__URL", "http://x")]).unwrap_err();
        assert_eq!(error.key, "rabbitmq.url");
    }

    #[test]
    fn pending_ttl_must_outlast_publish() {
        let error = load_env(&[
            ("WEBHOOK_BRIDGE__BROKER__PUBLISH_TIMEOUT_MS", "10000"),
            ("WEBHOOK_BRIDGE__REDIS__PENDING_TTL_MS", "5000"),
        ])
        .unwrap_err();
        assert_eq!(error.key, "redis.pending_ttl_ms");
    }

    #[test]
    fn shutdown_must_cover_longest_request() {
        let error =
            load_env(&[("WEBHOOK_BRIDGE__SERVER__SHUTDOWN_TIMEOUT_SECS", "12")]).unwrap_err();
        assert_eq!(error.key, "server.shutdown_timeout_secs");
        assert!(error.message.contains("13000 ms"), "{error}");
        assert!(load_env(&[("WEBHOOK_BRIDGE__SERVER__SHUTDOWN_TIMEOUT_SECS", "13")]).is_ok());
    }

    #[test]
    fn webhook_path_cannot_shadow_health() {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let error = load_env(&[("WEBHOOK_BRIDGE__SERVER__WEBHOOK_PATH", path)]).unwrap_err();
            assert_eq!(error.key, "server.webhook_path", "{path}");
        }
    }

    #[test]
    fn redacted_json_hides_passwords() {
        let settings = load_env(&[
            (
                "WEBHOOK_BRIDGE__RABBITMQ__URL",
                "amqp://app:s3cr3t@mq:5672/%2f",
            ),
            (
                "WEBHOOK_BRIDGE__REDIS__URL",
                "redis://:t0ps3cr3t@cache:6379/0",
            ),
        ])
        .unwrap();
        let line = settings.to_redacted_json();
        assert!(!line.contains("s3cr3t"), "{line}");
        assert!(!line.contains("t0ps3cr3t"), "{line}");
        assert!(line.contains("mq:5672"), "{line}");
        assert!(!format!("{settings:?}").contains("s3cr3t"));
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    const OTHER_TOKEN: &str = "fedcba9876543210fedcba9876543210";
    const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn auth_lists_split_on_commas() {
        let tokens = format!("{TOKEN}, {OTHER_TOKEN}");
        let settings = load_env(&[
            ("WEBHOOK_BRIDGE__AUTH__TOKENS", &tokens),
            ("WEBHOOK_BRIDGE__AUTH__SIGNING_SECRETS", SIGNING_SECRET),
            (
                "WEBHOOK_BRIDGE__AUTH__ALLOWED_NETWORKS",
                "203.0.113.0/24,2001:db8::/32",
            ),
            ("WEBHOOK_BRIDGE__AUTH__TRUSTED_PROXIES", "10.0.0.1"),
            ("WEBHOOK_BRIDGE__AUTH__TIMESTAMP_TOLERANCE_SECS", "60"),
        ])
        .unwrap();
        let auth = &settings.auth;
        let tokens: Vec<&str> = auth.tokens.iter().map(|token| token.expose()).collect();
        assert_eq!(tokens, [TOKEN, OTHER_TOKEN]);
        assert_eq!(auth.signing_secrets.len(), 1);
        assert_eq!(auth.allowed_networks, ["203.0.113.0/24", "2001:db8::/32"]);
        assert_eq!(auth.trusted_proxies, ["10.0.0.1"]);
        assert_eq!(auth.timestamp_tolerance_secs, 60);
    }

    #[test]
    fn digit_only_token_stays_a_list() {
        let digits = "12345678901234567890123456789012";
        let settings = load_env(&[("WEBHOOK_BRIDGE__AUTH__TOKENS", digits)]).unwrap();
        assert_eq!(settings.auth.tokens.len(), 1);
        assert_eq!(settings.auth.tokens[0].expose(), digits);
    }

    #[test]
    fn auth_lists_come_from_the_file() {
        let path = write_temp_file(&format!(
            "[auth]\ntokens = [\"{TOKEN}\"]\nallowed_networks = [\"10.0.0.0/8\"]\n"
        ));
        let settings = Settings::load_from(Some(&path), Some(HashMap::new())).unwrap();
        assert_eq!(settings.auth.tokens[0].expose(), TOKEN);
        assert_eq!(settings.auth.allowed_networks, ["10.0.0.0/8"]);

        let environment = HashMap::from([(
            "WEBHOOK_BRIDGE__AUTH__TOKENS".to_owned(),
            format!("{OTHER_TOKEN},{TOKEN}"),
        )]);
        let settings = Settings::load_from(Some(&path), Some(environment)).unwrap();
        assert_eq!(
            settings.auth.tokens.len(),
            2,
            "the environment replaces the list"
        );
        assert_eq!(settings.auth.tokens[0].expose(), OTHER_TOKEN);
    }

    #[test]
    fn invalid_auth_settings_are_named() {
        let cases = [
            ("TOKENS", "", "auth.tokens", "entry 1: is empty"),
            (
                "TOKENS",
                "too-short-token",
                "auth.tokens",
                "15 characters long",
            ),
            (
                "TOKENS",
                &format!("{TOKEN},,{OTHER_TOKEN}"),
                "auth.tokens",
                "entry 2: is empty",
            ),
            (
                "SIGNING_SECRETS",
                "whsec_%%%",
                "auth.signing_secrets",
                "not valid base64",
            ),
            (
                "SIGNING_SECRETS",
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "auth.signing_secrets",
                "must start with `whsec_`",
            ),
            (
                "ALLOWED_NETWORKS",
                "10.0.0.0/8,10.0.0.0/99",
                "auth.allowed_networks",
                "entry 2: `10.0.0.0/99` is not a CIDR block",
            ),
            (
                "TRUSTED_PROXIES",
                "proxy.internal",
                "auth.trusted_proxies",
                "`proxy.internal` is neither",
            ),
            (
                "TIMESTAMP_TOLERANCE_SECS",
                "0",
                "auth.timestamp_tolerance_secs",
                "between 1 and 3600",
            ),
            (
                "TIMESTAMP_TOLERANCE_SECS",
                "3601",
                "auth.timestamp_tolerance_secs",
                "between 1 and 3600",
            ),
        ];
        for (name, value, key, message) in cases {
            let name = format!("WEBHOOK_BRIDGE__AUTH__{name}");
            let error = load_env(&[(name.as_str(), value)]).unwrap_err();
            assert_eq!(error.key, key, "{name}={value}: {error}");
            assert!(error.message.contains(message), "{name}={value}: {error}");
        }
    }

    #[test]
    fn auth_secrets_are_redacted() {
        let settings = load_env(&[
            ("WEBHOOK_BRIDGE__AUTH__TOKENS", TOKEN),
            ("WEBHOOK_BRIDGE__AUTH__SIGNING_SECRETS", SIGNING_SECRET),
        ])
        .unwrap();
        let line = settings.to_redacted_json();
        assert!(!line.contains(TOKEN), "{line}");
        assert!(!line.contains("MfKQ9r8GKYqr"), "{line}");
        assert!(line.contains(r#""tokens":["***"]"#), "{line}");
        let debug = format!("{settings:?}");
        assert!(!debug.contains(TOKEN));
        assert!(!debug.contains("MfKQ9r8GKYqr"));

        let error =
            load_env(&[("WEBHOOK_BRIDGE__AUTH__TOKENS", "short-secret-value")]).unwrap_err();
        assert!(!error.to_string().contains("short-secret-value"), "{error}");
    }

    fn write_temp_file(contents: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("webhook-bridge-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bridge.toml");
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn file_layer_sits_under_environment() {
        let path = write_temp_file(
            "[rabbitmq]\nexchange = \"from-file\"\n[redis]\nkey_prefix = \"file:\"\n",
        );

        let environment = HashMap::from([(
            "WEBHOOK_BRIDGE__REDIS__KEY_PREFIX".to_owned(),
            "env:".to_owned(),
        )]);
        let settings = Settings::load_from(Some(&path), Some(environment)).unwrap();
        assert_eq!(settings.rabbitmq.exchange, "from-file");
        assert_eq!(settings.redis.key_prefix, "env:");
    }

    #[test]
    fn example_file_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
        // The example turns tokens on with a placeholder that must not pass for a token.
        let error = Settings::load_from(Some(&path), Some(HashMap::new())).unwrap_err();
        assert_eq!(error.key, "auth.tokens", "{error}");

        let token = "0123456789abcdef0123456789abcdef";
        let environment =
            HashMap::from([("WEBHOOK_BRIDGE__AUTH__TOKENS".to_owned(), token.to_owned())]);
        let loaded = Settings::load_from(Some(&path), Some(environment)).expect("example loads");
        assert_eq!(loaded.auth.tokens.len(), 1);
        let mut defaults = Settings::default();
        defaults.auth.tokens = loaded.auth.tokens.clone();
        assert_eq!(
            loaded.to_redacted_json(),
            defaults.to_redacted_json(),
            "apart from the token, the example shows the defaults"
        );

        let text = std::fs::read_to_string(&path).unwrap();
        let defaults = serde_json::to_value(Settings::default()).unwrap();
        for (section, keys) in defaults.as_object().unwrap() {
            let start = text
                .find(&format!("[{section}]\n"))
                .unwrap_or_else(|| panic!("section [{section}] is missing"));
            let body = &text[start..];
            let body = &body[..body[1..].find("\n[").map_or(body.len(), |end| end + 1)];
            for key in keys.as_object().unwrap().keys() {
                let table = format!("\n[{section}.{key}]\n");
                assert!(
                    body.contains(&format!("\n{key} = ")) || text.contains(&table),
                    "{section}.{key} is missing from config/example.toml"
                );
            }
        }
    }

    #[test]
    fn missing_file_is_reported() {
        let error =
            Settings::load_from(Some(Path::new("/nonexistent/bridge.toml")), None).unwrap_err();
        assert!(error.message.contains("not found"), "{error}");
    }
}
