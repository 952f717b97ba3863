//! A minimal Kafka consumer: prints the CloudEvents of one or more topics as a member of a
//! consumer group, and commits each offset after the event was handled.
//!
//!     cargo run --example consume_kafka -- task.completed task.failed
//!
//! `KAFKA_BROKERS` selects the cluster (default `127.0.0.1:9092`). The consumer stops when
//! no message arrived for `--idle-ms` milliseconds.

use std::time::Duration;

use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};

#[derive(Parser)]
struct Args {
    /// Topics to read, such as task.completed and task.failed.
    #[arg(required = true)]
    topics: Vec<String>,
    /// Consumer group; members of one group share the partitions between them.
    #[arg(long, default_value = "webhook-bridge-example")]
    group: String,
    /// Stop after this many milliseconds without a message.
    #[arg(long, default_value_t = 5_000)]
    idle_ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &args.group)
        // A new group starts at the oldest event still in the topic.
        .set("auto.offset.reset", "earliest")
        // Offsets are committed below, once an event was handled: at-least-once.
        .set("enable.auto.commit", "false")
        .create()?;
    let topics: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;

    let idle = Duration::from_millis(args.idle_ms);
    let mut count = 0;
    while let Ok(message) = tokio::time::timeout(idle, consumer.recv()).await {
        let message = message?;
        // The ce_* headers carry the CloudEvents attributes, so routing needs no parsing.
        let event_type = message
            .headers()
            .and_then(|headers| headers.iter().find(|header| header.key == "ce_type"))
            .and_then(|header| header.value)
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let key = message
            .key()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let payload = message
            .payload()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        println!("{event_type} task_id={key} {payload}");
        consumer.commit_message(&message, CommitMode::Async)?;
        count += 1;
    }
    eprintln!("{count} event(s) consumed; idle for {idle:?}, stopping.");
    Ok(())
}
