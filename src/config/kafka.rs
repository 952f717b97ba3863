//! Kafka settings, and the librdkafka properties that users pass through `kafka.options`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::config::NativeClientConfig;
use rdkafka::error::KafkaError;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, require_duration_ms, strict};

/// Replacement for the value of a secret librdkafka property in printed settings.
const REDACTED: &str = "***";

/// Parts of librdkafka property names whose values are credentials or private keys.
const SECRET_NAME_PARTS: [&str; 9] = [
    "password",
    "passphrase",
    "secret",
    "pem",
    "jaas",
    "token",
    "oauthbearer.config",
    "credential",
    "private.key",
];

/// Properties that the bridge sets from typed settings; `kafka.options` must not set them.
const OWNED_PROPERTIES: [(&str, &str); 4] = [
    ("bootstrap.servers", "set kafka.brokers instead"),
    ("metadata.broker.list", "set kafka.brokers instead"),
    ("client.id", "set kafka.client_id instead"),
    (
        "transactional.id",
        "transactions are not supported; each event is its own message",
    ),
];

/// Producer properties whose values decide the delivery guarantees. librdkafka also accepts
/// them with a `topic.` prefix, which `kafka.options` must not use for them, so that one
/// name carries the effective value.
const GUARDED_PROPERTIES: [&str; 10] = [
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "delivery.report.only.error",
    "enable.gapless.guarantee",
    "allow.auto.create.topics",
    "partitioner",
    "linger.ms",
];

/// How often librdkafka checks queued messages for an expired `message.timeout.ms`
/// (librdkafka 2.12 scans once a second), so its verdict can come this much later.
const TIMEOUT_SCAN_INTERVAL_MS: u64 = 1_000;

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room for the CloudEvents attributes and the `ce_*` headers around the callback body. The
/// task id appears up to five times, at most 1 KiB each in UTF-8, and `event.source` twice,
/// at most 1 KiB each.
const EVENT_OVERHEAD_BYTES: usize = 8 * 1024;

/// Largest partition count accepted for topic creation.
const MAX_PARTITIONS: i32 = 10_000;

/// Kafka settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers as `host:port`, separated by commas.
    pub brokers: String,
    /// Topic of `task.completed` events.
    pub topic_completed: String,
    /// Topic of `task.failed` events.
    pub topic_failed: String,
    /// Topic of dead letters: rejected callbacks kept for inspection. The health check and
    /// `create_topics` leave it out.
    pub topic_invalid: String,
    /// `client.id` of the producer, as shown in broker logs and quotas.
    pub client_id: String,
    /// Time allowed for one metadata request: the startup check and each health check.
    #[serde(deserialize_with = "strict::whole_number")]
    pub metadata_timeout_ms: u64,
    /// How often the broker's reachability and the topics are checked for `/readyz`.
    #[serde(deserialize_with = "strict::whole_number")]
    pub health_check_interval_ms: u64,
    /// Whether to create missing topics at startup.
    #[serde(deserialize_with = "strict::boolean")]
    pub create_topics: bool,
    /// Partition count of topics created at startup.
    #[serde(deserialize_with = "strict::whole_number")]
    pub topic_partitions: i32,
    /// Replication factor of topics created at startup.
    #[serde(deserialize_with = "strict::whole_number")]
    pub topic_replication_factor: i32,
    /// On shutdown, how long the producer may take to deliver what it still holds.
    #[serde(deserialize_with = "strict::whole_number")]
    pub flush_timeout_ms: u64,
    /// Further librdkafka producer properties, such as `security.protocol` or
    /// `compression.type`.
    pub options: KafkaOptions,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            topic_completed: "task.completed".to_owned(),
            topic_failed: "task.failed".to_owned(),
            topic_invalid: "task.invalid".to_owned(),
            client_id: "webhook-bridge".to_owned(),
            metadata_timeout_ms: 5_000,
            health_check_interval_ms: 5_000,
            create_topics: false,
            topic_partitions: 3,
            topic_replication_factor: 1,
            flush_timeout_ms: 5_000,
            options: KafkaOptions::default(),
        }
    }
}

impl KafkaSettings {
    pub(super) fn validate(&self, publish_timeout_ms: u64) -> Result<(), ConfigError> {
        let invalid_broker = |broker: &str| {
            let Some((host, port)) = broker.trim().rsplit_once(':') else {
                return true;
            };
            // An IPv6 address needs brackets, as in [::1]:9092.
            let bare_ipv6 = host.contains(':') && !(host.starts_with('[') && host.ends_with(']'));
            host.is_empty()
                || host.contains("://")
                || bare_ipv6
                || !port.parse::<u16>().is_ok_and(|port| port > 0)
        };
        if self.brokers.split(',').any(invalid_broker) {
            return Err(ConfigError::new(
                "kafka.brokers",
                "must list host:port pairs separated by commas, such as kafka-1:9092,kafka-2:9092",
            ));
        }

        for (key, topic) in [
            ("kafka.topic_completed", &self.topic_completed),
            ("kafka.topic_failed", &self.topic_failed),
            ("kafka.topic_invalid", &self.topic_invalid),
        ] {
            check_topic_name(topic).map_err(|message| ConfigError::new(key, message))?;
        }
        if self.topic_completed == self.topic_failed {
            return Err(ConfigError::new(
                "kafka.topic_failed",
                "must differ from kafka.topic_completed",
            ));
        }
        if self.topic_invalid == self.topic_completed || self.topic_invalid == self.topic_failed {
            return Err(ConfigError::new(
                "kafka.topic_invalid",
                "must differ from kafka.topic_completed and kafka.topic_failed",
            ));
        }

        if self.client_id.is_empty() {
            return Err(ConfigError::new("kafka.client_id", "must not be empty"));
        }
        require_duration_ms("kafka.metadata_timeout_ms", self.metadata_timeout_ms)?;
        require_duration_ms(
            "kafka.health_check_interval_ms",
            self.health_check_interval_ms,
        )?;
        require_duration_ms("kafka.flush_timeout_ms", self.flush_timeout_ms)?;
        if !(1..=MAX_PARTITIONS).contains(&self.topic_partitions) {
            return Err(ConfigError::new(
                "kafka.topic_partitions",
                format!("must be between 1 and {MAX_PARTITIONS}"),
            ));
        }
        if !(1..=i32::from(i16::MAX)).contains(&self.topic_replication_factor) {
            return Err(ConfigError::new(
                "kafka.topic_replication_factor",
                format!("must be between 1 and {}", i16::MAX),
            ));
        }

        let publish_timeout = Duration::from_millis(publish_timeout_ms);
        self.options.validate(publish_timeout)?;
        // librdkafka checks every property name and value without connecting. Its error
        // text quotes the rejected value, which may be a secret under a misspelt name, so
        // only the name and the reason are kept.
        let native = self
            .producer_config(publish_timeout)
            .create_native_config()
            .map_err(|error| match error {
                KafkaError::ClientConfig(_, reason, name, _) => {
                    ConfigError::new(&format!("kafka.options.{name}"), reason)
                }
                other => ConfigError::new("kafka.options", self.options.redact(&other.to_string())),
            })?;
        check_effective(&native, publish_timeout)
    }

    /// Checks that an event carrying the largest accepted body stays within librdkafka's
    /// `message.max.bytes`, which would otherwise reject it on every delivery attempt.
    pub(super) fn check_body_fits(&self, max_body_bytes: usize) -> Result<(), ConfigError> {
        let limit = self
            .options
            .get("message.max.bytes")
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        if max_body_bytes + EVENT_OVERHEAD_BYTES > limit {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                format!(
                    "must leave {EVENT_OVERHEAD_BYTES} bytes for the event envelope below the Kafka message.max.bytes ({limit}); lower it, or raise kafka.options.message.max.bytes together with the topic's max.message.bytes"
                ),
            ));
        }
        Ok(())
    }

    /// Builds the producer configuration: the safe defaults, then `kafka.options`, then the
    /// properties the bridge owns.
    pub fn producer_config(&self, publish_timeout: Duration) -> ClientConfig {
        let delivery_timeout = self
            .effective_delivery_timeout(publish_timeout)
            .as_millis()
            .to_string();
        let mut config = ClientConfig::new();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", &delivery_timeout)
            .set("request.timeout.ms", &delivery_timeout)
            .set("delivery.report.only.error", "false")
            // A misspelt topic must not be created with the broker's defaults.
            .set("allow.auto.create.topics", "false");
        // The message timeout is set once above under one name: with an alias set as well,
        // librdkafka would take whichever came last.
        for (name, value) in &self.options.0 {
            if !matches!(name.as_str(), "message.timeout.ms" | "delivery.timeout.ms") {
                config.set(name, value);
            }
        }
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id);
        config
    }

    /// Returns `message.timeout.ms`: the value from `kafka.options` (under either name), or
    /// the default for the publish timeout.
    pub fn effective_delivery_timeout(&self, publish_timeout: Duration) -> Duration {
        self.options
            .get("message.timeout.ms")
            .or(self.options.get("delivery.timeout.ms"))
            .and_then(|value| value.trim().parse().ok())
            .map_or(delivery_timeout(publish_timeout), Duration::from_millis)
    }

    /// Returns the topic of an event type.
    pub fn topic(&self, event_type: crate::event::EventType) -> &str {
        match event_type {
            crate::event::EventType::TaskCompleted => &self.topic_completed,
            crate::event::EventType::TaskFailed => &self.topic_failed,
        }
    }
}

/// Returns the default and largest `message.timeout.ms`: the publish timeout less the tenth
/// that the local queue wait may take and librdkafka's one-second timeout scan, but at least
/// half the publish timeout. librdkafka then usually gives its verdict on a message before
/// the request stops waiting for it. With publish timeouts below 2.5 s it may not.
pub fn delivery_timeout(publish_timeout: Duration) -> Duration {
    let millis = publish_timeout.as_millis() as u64;
    let budget = millis.saturating_sub(millis / 10 + TIMEOUT_SCAN_INTERVAL_MS);
    Duration::from_millis(budget.max(millis / 2).max(1))
}

/// Checks the properties that decide the delivery guarantees on the configuration that
/// librdkafka built, where aliases and defaults have been resolved.
fn check_effective(
    native: &NativeClientConfig,
    publish_timeout: Duration,
) -> Result<(), ConfigError> {
    let read = |name: &str| native.get(name).unwrap_or_default();
    let fail = |name: &str, message: String| {
        Err(ConfigError::new(&format!("kafka.options.{name}"), message))
    };

    let max_delivery = delivery_timeout(publish_timeout).as_millis() as u64;
    let delivery: u64 = read("message.timeout.ms").parse().unwrap_or(0);
    if delivery == 0 || delivery > max_delivery {
        return fail(
            "message.timeout.ms",
            delivery_timeout_message(publish_timeout),
        );
    }

    let request: u64 = read("request.timeout.ms").parse().unwrap_or(u64::MAX);
    if request > delivery {
        return fail(
            "request.timeout.ms",
            format!(
                "must be at most message.timeout.ms ({delivery} ms), so that no produce request outlives its messages"
            ),
        );
    }

    let linger: f64 = read("linger.ms").parse().unwrap_or(0.0);
    if linger > delivery as f64 / 4.0 {
        return fail(
            "linger.ms",
            format!(
                "must be at most a quarter of message.timeout.ms ({delivery} ms), so that a batch leaves while its messages still have time"
            ),
        );
    }

    for (name, expected, reason) in [
        (
            "enable.idempotence",
            "true",
            "producer retries must not write an event twice",
        ),
        (
            "delivery.report.only.error",
            "false",
            "the bridge answers 2xx only on a successful delivery report",
        ),
        (
            "enable.gapless.guarantee",
            "false",
            "it turns every message timeout into a fatal producer error",
        ),
        (
            "allow.auto.create.topics",
            "false",
            "the health check would create missing topics with the broker's defaults; set kafka.create_topics instead",
        ),
    ] {
        if read(name) != expected {
            return fail(name, format!("must be {expected}, because {reason}"));
        }
    }

    if !matches!(read("acks").as_str(), "-1" | "all") {
        return fail("acks", ACKS_MESSAGE.to_owned());
    }

    if read("partitioner") == "random" {
        return fail(
            "partitioner",
            "must hash the key, so that the events of one task stay in one partition".to_owned(),
        );
    }
    Ok(())
}

/// Reason given when `acks` is not `all`.
const ACKS_MESSAGE: &str =
    "must be all, so that an event is confirmed only once every in-sync replica has it";

/// Returns the reason given when `message.timeout.ms` lies outside its allowed range.
fn delivery_timeout_message(publish_timeout: Duration) -> String {
    format!(
        "must be between 1 and {} ms for broker.publish_timeout_ms = {}, so that librdkafka gives up on a message before the request stops waiting",
        delivery_timeout(publish_timeout).as_millis(),
        publish_timeout.as_millis()
    )
}

/// Checks a name against the rules of Kafka topic names.
fn check_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 {
        return Err("must be 1 to 249 characters long".to_owned());
    }
    if topic == "." || topic == ".." {
        return Err(format!("`{topic}` is not a valid topic name"));
    }
    if !topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "`{topic}` may contain only ASCII letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// librdkafka properties passed through to the producer. Values of properties that hold
/// credentials print as `***`. Names are lower case with `.` between words; an environment
/// variable writes `_` for `.`, as in `WEBHOOK_BRIDGE__KAFKA__OPTIONS__SASL_PASSWORD`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaOptions(BTreeMap<String, String>);

impl KafkaOptions {
    /// Returns the value of a property, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Sets a property, with its name written as in the configuration file or the
    /// environment. `Settings::validate` checks it.
    pub fn insert(&mut self, name: &str, value: &str) {
        self.0.insert(normalize_name(name), value.to_owned());
    }

    /// Checks the names and values as given. [`check_effective`] then checks what librdkafka
    /// made of them.
    fn validate(&self, publish_timeout: Duration) -> Result<(), ConfigError> {
        for (name, value) in &self.0 {
            let key = format!("kafka.options.{name}");
            if let Some((_, instead)) = OWNED_PROPERTIES.iter().find(|(owned, _)| owned == name) {
                return Err(ConfigError::new(&key, *instead));
            }

            // librdkafka's test properties, such as test.mock.num.brokers, would replace the
            // brokers with an in-process mock cluster.
            if name.starts_with("test.") {
                return Err(ConfigError::new(
                    &key,
                    "librdkafka test properties are not accepted",
                ));
            }

            if let Some(base) = name.strip_prefix("topic.")
                && GUARDED_PROPERTIES.contains(&base)
            {
                return Err(ConfigError::new(
                    &key,
                    format!("set it without the topic. prefix, as kafka.options.{base}"),
                ));
            }

            // check_effective repeats these two checks on the resolved values. Here they
            // name the property as the user wrote it, alias included.
            let value = value.trim();
            match name.as_str() {
                "acks" | "request.required.acks" if !matches!(value, "all" | "-1") => {
                    return Err(ConfigError::new(&key, ACKS_MESSAGE));
                }
                "message.timeout.ms" | "delivery.timeout.ms" => {
                    let max_delivery = delivery_timeout(publish_timeout).as_millis() as u64;
                    let within_budget = value
                        .parse::<u64>()
                        .is_ok_and(|millis| millis > 0 && millis <= max_delivery);
                    if !within_budget {
                        return Err(ConfigError::new(
                            &key,
                            delivery_timeout_message(publish_timeout),
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Returns the values of the secret properties, for [`redact_secrets`].
    pub fn secret_values(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(name, value)| Self::is_secret(name) && !value.is_empty())
            .map(|(_, value)| value.clone())
            .collect()
    }

    /// Replaces the values of secret properties inside `text`, such as an error message of
    /// librdkafka that quotes the value it rejected.
    pub fn redact(&self, text: &str) -> String {
        redact_secrets(text, &self.secret_values())
    }

    fn is_secret(name: &str) -> bool {
        SECRET_NAME_PARTS.iter().any(|part| name.contains(part))
    }

    /// Returns the value to print for a property: `***` for a secret one.
    fn printable<'a>(name: &str, value: &'a str) -> &'a str {
        if Self::is_secret(name) {
            REDACTED
        } else {
            value
        }
    }
}

/// Replaces every secret value inside `text` by `***`. librdkafka may quote only a part of a
/// value, such as the rest of `sasl.oauthbearer.config` after a parse error, so every word of
/// four or more characters of a secret is replaced too.
pub fn redact_secrets(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        text = text.replace(secret.as_str(), REDACTED);
        let words = secret.split(|c: char| c.is_whitespace() || matches!(c, '=' | ',' | ';'));
        for word in words.filter(|word| word.chars().count() >= 4) {
            text = text.replace(word, REDACTED);
        }
    }
    text
}

impl fmt::Debug for KafkaOptions {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(name, value)| (name, Self::printable(name, value))),
            )
            .finish()
    }
}

impl Serialize for KafkaOptions {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, Self::printable(name, value))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for KafkaOptions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OptionsVisitor)
    }
}

struct OptionsVisitor;

impl<'de> Visitor<'de> for OptionsVisitor {
    type Value = KafkaOptions;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a table of librdkafka properties")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut options = BTreeMap::new();
        while let Some(name) = access.next_key::<String>()? {
            let value: OptionValue = access.next_value()?;
            let name = normalize_name(&name);
            if options.insert(name.clone(), value.0).is_some() {
                return Err(de::Error::custom(format!("property {name} is set twice")));
            }
        }
        Ok(KafkaOptions(options))
    }
}

/// Returns a property name in librdkafka's form: lower case, with `.` for each `_`.
fn normalize_name(name: &str) -> String {
    name.to_lowercase().replace('_', ".")
}

/// A property value: librdkafka takes strings, and TOML may hold numbers or booleans.
struct OptionValue(String);

impl<'de> Deserialize<'de> for OptionValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;

        impl Visitor<'_> for ValueVisitor {
            type Value = OptionValue;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string, an integer or a boolean")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(OptionValue(value.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(OptionValue(value.to_string()))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(OptionValue(value.to_string()))
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
                Ok(OptionValue(value.to_string()))
            }

            // Accepted rather than rejected, because serde's error would quote the value,
            // and it may be a secret.
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                Ok(OptionValue(value.to_string()))
            }
        }

        deserializer.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::{BrokerKind, ConfigError, Settings};

    fn load_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let environment: HashMap<String, String> = pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        Settings::load_from(None, Some(environment))
    }

    #[test]
    fn kafka_is_selected_from_environment() {
        let settings = load_env(&[
            ("WEBHOOK_BRIDGE__BROKER__KIND", "kafka"),
            ("WEBHOOK_BRIDGE__KAFKA__BROKERS", "k1:9092,k2:9092"),
            ("WEBHOOK_BRIDGE__KAFKA__TOPIC_FAILED", "media.failed"),
        ])
        .unwrap();
        assert_eq!(settings.broker.kind, BrokerKind::Kafka);
        assert_eq!(settings.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(settings.kafka.topic_completed, "task.completed");
        assert_eq!(settings.kafka.topic_failed, "media.failed");
    }

    #[test]
    fn producer_config_keeps_safe_defaults() {
        let settings = load_env(&[
            ("WEBHOOK_BRIDGE__KAFKA__OPTIONS__COMPRESSION_TYPE", "zstd"),
            ("WEBHOOK_BRIDGE__KAFKA__OPTIONS__LINGER_MS", "2"),
        ])
        .unwrap();
        let config = settings
            .kafka
            .producer_config(settings.broker.publish_timeout());
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("message.timeout.ms"), Some("3500"));
        assert_eq!(config.get("compression.type"), Some("zstd"));
        assert_eq!(config.get("linger.ms"), Some("2"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }

    #[test]
    fn options_from_file_take_dotted_names_and_numbers() {
        let dir =
            std::env::temp_dir().join(format!("webhook-bridge-kafka-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bridge.toml");
        std::fs::write(
            &path,
            "[kafka.options]\n\"batch.num.messages\" = 500\n\"socket.keepalive.enable\" = true\n",
        )
        .unwrap();
        let settings = Settings::load_from(Some(&path), Some(HashMap::new())).unwrap();
        assert_eq!(
            settings.kafka.options.get("batch.num.messages"),
            Some("500")
        );
        assert_eq!(
            settings.kafka.options.get("socket.keepalive.enable"),
            Some("true")
        );
    }

    #[test]
    fn weakened_guarantees_are_rejected() {
        let cases = [
            ("ACKS", "1", "kafka.options.acks"),
            (
                "REQUEST_REQUIRED_ACKS",
                "0",
                "kafka.options.request.required.acks",
            ),
            (
                "ENABLE_IDEMPOTENCE",
                "false",
                "kafka.options.enable.idempotence",
            ),
            (
                "MESSAGE_TIMEOUT_MS",
                "300000",
                "kafka.options.message.timeout.ms",
            ),
            (
                "DELIVERY_TIMEOUT_MS",
                "0",
                "kafka.options.delivery.timeout.ms",
            ),
            (
                "BOOTSTRAP_SERVERS",
                "x:9092",
                "kafka.options.bootstrap.servers",
            ),
            (
                "TRANSACTIONAL_ID",
                "bridge",
                "kafka.options.transactional.id",
            ),
            (
                "DELIVERY_REPORT_ONLY_ERROR",
                "true",
                "kafka.options.delivery.report.only.error",
            ),
            (
                "ENABLE_GAPLESS_GUARANTEE",
                "true",
                "kafka.options.enable.gapless.guarantee",
            ),
            (
                "ALLOW_AUTO_CREATE_TOPICS",
                "true",
                "kafka.options.allow.auto.create.topics",
            ),
            ("PARTITIONER", "random", "kafka.options.partitioner"),
            ("LINGER_MS", "2000", "kafka.options.linger.ms"),
            ("QUEUE_BUFFERING_MAX_MS", "2000", "kafka.options.linger.ms"),
            (
                "TOPIC_MESSAGE_TIMEOUT_MS",
                "0",
                "kafka.options.topic.message.timeout.ms",
            ),
            ("TOPIC_ACKS", "1", "kafka.options.topic.acks"),
        ];
        for (name, value, key) in cases {
            let name = format!("WEBHOOK_BRIDGE__KAFKA__OPTIONS__{name}");
            let error = load_env(&[(name.as_str(), value)]).unwrap_err();
            assert_eq!(error.key, key, "{name}={value}: {error}");
        }
        let settings =
            load_env(&[("WEBHOOK_BRIDGE__KAFKA__OPTIONS__MESSAGE_TIMEOUT_MS", "3000")]).unwrap();
        let config = settings
            .kafka
            .producer_config(settings.broker.publish_timeout());
        assert_eq!(config.get("message.timeout.ms"), Some("3000"));
        assert_eq!(config.get("request.timeout.ms"), Some("3000"));

        let settings = load_env(&[(
            "WEBHOOK_BRIDGE__KAFKA__OPTIONS__DELIVERY_TIMEOUT_MS",
            "2500",
        )])
        .unwrap();
        let config = settings
            .kafka
            .producer_config(settings.broker.publish_timeout());
        assert_eq!(config.get("message.timeout.ms"), Some("2500"));
        assert_eq!(config.get("delivery.timeout.ms"), None, "one name only");
    }

    #[test]
    fn librdkafka_checks_property_names_and_values() {
        let error = load_env(&[("WEBHOOK_BRIDGE__KAFKA__OPTIONS__LINGER_MSS", "5")]).unwrap_err();
        assert_eq!(error.key, "kafka.options.linger.mss");
        assert!(
            error.message.contains("No such configuration property"),
            "{error}"
        );

        let error = load_env(&[("WEBHOOK_BRIDGE__KAFKA__OPTIONS__COMPRESSION_TYPE", "brotli")])
            .unwrap_err();
        assert_eq!(error.key, "kafka.options.compression.type");
    }

    #[test]
    fn misspelt_secret_value_is_not_quoted() {
        let error = load_env(&[(
            "WEBHOOK_BRIDGE__KAFKA__OPTIONS__SASL_PASSWD",
            "TopSecretValue1",
        )])
        .unwrap_err();
        assert_eq!(error.key, "kafka.options.sasl.passwd");
        assert!(!error.to_string().contains("TopSecretValue1"), "{error}");
    }

    #[test]
    fn secret_options_never_print() {
        let settings = load_env(&[
            (
                "WEBHOOK_BRIDGE__KAFKA__OPTIONS__SECURITY_PROTOCOL",
                "SASL_SSL",
            ),
            ("WEBHOOK_BRIDGE__KAFKA__OPTIONS__SASL_MECHANISMS", "PLAIN"),
            ("WEBHOOK_BRIDGE__KAFKA__OPTIONS__SASL_USERNAME", "bridge"),
            (
                "WEBHOOK_BRIDGE__KAFKA__OPTIONS__SASL_PASSWORD",
                "hunter2-kafka",
            ),
            (
                "WEBHOOK_BRIDGE__KAFKA__OPTIONS__SSL_KEY_PASSWORD",
                "hunter3-key",
            ),
        ])
        .unwrap();
        let line = settings.to_redacted_json();
        assert!(!line.contains("hunter2-kafka"), "{line}");
        assert!(!line.contains("hunter3-key"), "{line}");
        assert!(line.contains("\"sasl.password\":\"***\""), "{line}");
        assert!(line.contains("\"sasl.username\":\"bridge\""), "{line}");
        assert!(!format!("{settings:?}").contains("hunter2-kafka"));
    }

    #[test]
    fn secret_values_are_redacted_from_error_text() {
        let options = super::KafkaOptions(
            [
                ("sasl.password".to_owned(), "hunter2-pass".to_owned()),
                ("sasl.username".to_owned(), "bridge".to_owned()),
            ]
            .into(),
        );
        assert_eq!(
            options.redact("Invalid value \"hunter2-pass\" for bridge"),
            "Invalid value \"***\" for bridge"
        );
    }

    #[test]
    fn body_limit_fits_kafka_message() {
        let error = load_env(&[
            ("WEBHOOK_BRIDGE__BROKER__KIND", "kafka"),
            ("WEBHOOK_BRIDGE__SERVER__MAX_BODY_BYTES", "2000000"),
        ])
        .unwrap_err();
        assert_eq!(error.key, "server.max_body_bytes");
        assert!(error.message.contains("1000000"), "{error}");

        let raised = load_env(&[
            ("WEBHOOK_BRIDGE__BROKER__KIND", "kafka"),
            ("WEBHOOK_BRIDGE__SERVER__MAX_BODY_BYTES", "2000000"),
            (
                "WEBHOOK_BRIDGE__KAFKA__OPTIONS__MESSAGE_MAX_BYTES",
                "3000000",
            ),
        ]);
        assert!(raised.is_ok(), "{raised:?}");

        let rabbitmq = load_env(&[("WEBHOOK_BRIDGE__SERVER__MAX_BODY_BYTES", "2000000")]);
        assert!(rabbitmq.is_ok(), "the limit applies to Kafka only");
    }

    #[test]
    fn invalid_kafka_values_are_named() {
        let cases = [
            ("BROKERS", "kafka://k1:9092", "kafka.brokers"),
            ("BROKERS", "k1", "kafka.brokers"),
            ("BROKERS", "127.0.0.1:70000", "kafka.brokers"),
            ("BROKERS", "k1:9092,", "kafka.brokers"),
            ("BROKERS", "::1:9092", "kafka.brokers"),
            (
                "OPTIONS__TEST_MOCK_NUM_BROKERS",
                "1",
                "kafka.options.test.mock.num.brokers",
            ),
            (
                "OPTIONS__REQUEST_TIMEOUT_MS",
                "900000",
                "kafka.options.request.timeout.ms",
            ),
            ("TOPIC_COMPLETED", "task completed", "kafka.topic_completed"),
            ("TOPIC_FAILED", "task.completed", "kafka.topic_failed"),
            ("TOPIC_PARTITIONS", "0", "kafka.topic_partitions"),
            (
                "TOPIC_REPLICATION_FACTOR",
                "40000",
                "kafka.topic_replication_factor",
            ),
            ("FLUSH_TIMEOUT_MS", "0", "kafka.flush_timeout_ms"),
            ("CREATE_TOPICS", "yes", "kafka.create_topics"),
        ];
        for (name, value, key) in cases {
            let name = format!("WEBHOOK_BRIDGE__KAFKA__{name}");
            let error = load_env(&[(name.as_str(), value)]).unwrap_err();
            assert_eq!(error.key, key, "{name}={value}: {error}");
        }
    }
}
