//! Kafka test tools: per-test topics on a real broker or a librdkafka mock cluster, and a
//! consumer that reads back what the bridge published.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use webhook_bridge::Settings;
use webhook_bridge::config::BrokerKind;

use crate::helpers::{TestApp, bridge_environment, spawn_app_with};

/// The Kafka-protocol broker that `scripts/test` starts (tansu).
pub const KAFKA_BROKERS: &str = "127.0.0.1:9092";

/// A message read back from a topic.
#[derive(Debug)]
pub struct KafkaMessage {
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
    pub timestamp: Option<i64>,
}

/// Points `settings` at Kafka on `brokers`, with the topics `test.<id>.completed`,
/// `test.<id>.failed` and `test.<id>.invalid`, and short health-check intervals. Only the
/// tests that read dead letters create the `invalid` topic.
pub fn use_kafka(settings: &mut Settings, brokers: &str, id: &str) {
    settings.broker.kind = BrokerKind::Kafka;
    settings.kafka.brokers = brokers.to_owned();
    settings.kafka.topic_completed = format!("test.{id}.completed");
    settings.kafka.topic_failed = format!("test.{id}.failed");
    settings.kafka.topic_invalid = invalid_topic_of(id);
    settings.kafka.metadata_timeout_ms = 1_000;
    settings.kafka.health_check_interval_ms = 200;
    settings.kafka.flush_timeout_ms = 2_000;
}

/// Returns a fresh topic id for one test.
pub fn topic_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Both topics of `id`.
pub fn topics_of(id: &str) -> [String; 2] {
    [format!("test.{id}.completed"), format!("test.{id}.failed")]
}

/// Returns the dead-letter topic of `id`.
pub fn invalid_topic_of(id: &str) -> String {
    format!("test.{id}.invalid")
}

/// Both topics of `settings`.
pub fn topics(settings: &Settings) -> [String; 2] {
    [
        settings.kafka.topic_completed.clone(),
        settings.kafka.topic_failed.clone(),
    ]
}

/// Returns the environment of a bridge process that listens on `port` and publishes to the
/// topics of `id` on `brokers`, with the test's key prefix from `settings`.
pub fn kafka_bridge_environment(
    settings: &Settings,
    port: u16,
    brokers: &str,
    id: &str,
) -> Vec<(String, String)> {
    let [completed_topic, failed_topic] = topics_of(id);
    let mut environment = bridge_environment(settings, port);
    for (key, value) in [
        ("BROKER__KIND", "kafka".to_owned()),
        ("KAFKA__BROKERS", brokers.to_owned()),
        ("KAFKA__TOPIC_COMPLETED", completed_topic),
        ("KAFKA__TOPIC_FAILED", failed_topic),
        ("KAFKA__TOPIC_INVALID", invalid_topic_of(id)),
    ] {
        environment.push((format!("WEBHOOK_BRIDGE__{key}"), value));
    }
    environment
}

/// Starts a one-broker librdkafka mock cluster with the topics of `id`.
pub fn mock_cluster(id: &str) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in topics_of(id) {
        cluster.create_topic(&topic, 1, 1).expect("mock topic");
    }
    cluster
}

/// A tansu broker of the test's own, on a free loopback port, with in-memory storage that a
/// restart loses. It is killed when dropped.
pub struct OwnBroker {
    child: std::process::Child,
    port: u16,
}

impl OwnBroker {
    /// Starts tansu on `port` and waits until it accepts connections.
    pub async fn start(port: u16) -> Self {
        let listener = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new("tansu")
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu starts (scripts/test installs it)");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "tansu listens on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, port }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker with SIGKILL, as a crash would, and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates the test's topics on `brokers`, then starts the bridge against them and waits
/// until it is ready.
pub async fn spawn_kafka_app(brokers: &str, customize: impl FnOnce(&mut Settings)) -> TestApp {
    let id = topic_id();
    create_topics(brokers, &topics_of(&id)).await;
    let app = spawn_app_with(|settings| {
        use_kafka(settings, brokers, &id);
        customize(settings);
    })
    .await;
    app.wait_ready(200, Duration::from_secs(10)).await;
    app
}

/// Stops the bridge, then deletes its topics (the dead-letter one too, if a test created it)
/// and keys.
pub async fn teardown_kafka(app: TestApp) {
    let settings = app.settings.clone();
    app.teardown().await;
    let mut topics = topics(&settings).to_vec();
    topics.push(settings.kafka.topic_invalid.clone());
    delete_topics(&settings.kafka.brokers, &topics).await;
}

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client")
}

/// Creates `topics` with one partition each.
pub async fn create_topics(brokers: &str, topics: &[String]) {
    let admin = admin(brokers);
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, 1, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .expect("CreateTopics request");
    for result in results {
        result.expect("topic created");
    }
}

/// Deletes `topics`, ignoring topics that do not exist.
pub async fn delete_topics(brokers: &str, topics: &[String]) {
    let admin = admin(brokers);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = admin.delete_topics(&names, &options).await;
}

/// Number of partitions of `topic`, read from the broker's metadata.
pub async fn partition_count(brokers: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("metadata client");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), Timeout::After(Duration::from_secs(10)))
            .expect("topic metadata");
        metadata.topics()[0].partitions().len()
    })
    .await
    .expect("metadata thread")
}

/// Reads `topic` from the beginning until `expected` messages arrived and nothing more came
/// for a moment, or `limit` passed. Returns what it read, so that a duplicate shows up as
/// one message too many.
pub async fn consume(brokers: &str, topic: &str, expected: usize) -> Vec<KafkaMessage> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || consume_blocking(&brokers, &topic, expected))
        .await
        .expect("consumer thread")
}

fn consume_blocking(brokers: &str, topic: &str, expected: usize) -> Vec<KafkaMessage> {
    const LIMIT: Duration = Duration::from_secs(20);
    const QUIET: Duration = Duration::from_millis(500);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("test-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Timeout::After(Duration::from_secs(10)))
        .expect("topic metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    assert!(assignment.count() > 0, "topic {topic} has partitions");
    consumer.assign(&assignment).expect("assign");

    let started = Instant::now();
    let mut last_message = Instant::now();
    let mut messages = Vec::new();
    while started.elapsed() < LIMIT {
        if messages.len() >= expected && last_message.elapsed() > QUIET {
            break;
        }
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = polled.expect("consumed message");
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        let value = header.value.map(|value| String::from_utf8_lossy(value));
                        (
                            header.key.to_owned(),
                            value.unwrap_or_default().into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        messages.push(KafkaMessage {
            key: message
                .key()
                .map(|key| String::from_utf8_lossy(key).into_owned()),
            headers,
            payload: message.payload().unwrap_or_default().to_vec(),
            timestamp: message.timestamp().to_millis(),
        });
        last_message = Instant::now();
    }
    messages
}
