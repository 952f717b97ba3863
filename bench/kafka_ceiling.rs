//! Throughput ceiling for the load benchmark on Kafka. It publishes the bridge's events straight
//! to Kafka with the bridge's producer settings (idempotent, `acks=all`) and waits for each
//! delivery report, with no HTTP and no Redis. `bench/run.sh` also runs it with `--create-only`
//! to create a run's topics and with `--delete-only` to count (by reading them) and delete
//! them.

#[path = "report.rs"]
mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use report::{WorkerReport, print_report};
use webhook_bridge::callback::Callback;
use webhook_bridge::config::KafkaSettings;
use webhook_bridge::event::Event;
use webhook_bridge::publisher::message_headers;

/// Time allowed for each topic administration and metadata request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Counting a topic ends once no message arrived for this long, or after [`COUNT_LIMIT`].
const COUNT_IDLE: Duration = Duration::from_secs(2);
const COUNT_LIMIT: Duration = Duration::from_secs(300);

/// Publishes events straight to Kafka and reports delivered publishes per second.
#[derive(Parser)]
struct Cli {
    /// Bootstrap servers, `host:port` separated by commas.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic of `task.completed` events.
    #[arg(long)]
    topic_completed: String,
    /// Topic of `task.failed` events.
    #[arg(long)]
    topic_failed: String,
    /// Partitions of each topic that this program creates.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Number of publishes in flight at once, each waiting for its own delivery report.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to publish, such as `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Start of every task id, `<prefix>-c<task number>-<sequence>`.
    #[arg(long, default_value = "ceiling")]
    task_id_prefix: String,
    /// Share of events of type `task.failed`, in percent. The rest are `task.completed`.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=100))]
    failed_percent: u64,
    /// Time allowed for one publish, delivery report included. The bridge's default is 5 s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    publish_timeout: Duration,
    /// Create both topics and exit without publishing.
    #[arg(long)]
    create_only: bool,
    /// Print the message count of each topic, delete both topics, and exit.
    #[arg(long, conflicts_with = "create_only")]
    delete_only: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    if cli.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let topics = [cli.topic_completed.clone(), cli.topic_failed.clone()];
    if cli.delete_only {
        // A topic that does not exist, such as one deleted already, is skipped.
        let mut existing = Vec::new();
        for topic in topics {
            if let Some(messages) = count_messages(&cli.brokers, &topic)? {
                println!("deleted topic={topic} messages={messages}");
                existing.push(topic);
            }
        }
        return delete_topics(&cli.brokers, &existing).await;
    }

    create_topics(&cli.brokers, &topics, cli.partitions).await?;
    if cli.create_only {
        return Ok(());
    }

    let settings = KafkaSettings {
        brokers: cli.brokers.clone(),
        topic_completed: cli.topic_completed.clone(),
        topic_failed: cli.topic_failed.clone(),
        ..KafkaSettings::default()
    };
    let producer: FutureProducer = settings.producer_config(cli.publish_timeout).create()?;
    let producer = Arc::new(producer);
    let settings = Arc::new(settings);

    let deadline = Instant::now() + cli.duration;
    let sequence = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..cli.concurrency)
        .map(|worker| {
            let producer = producer.clone();
            let settings = settings.clone();
            let sequence = sequence.clone();
            let prefix = cli.task_id_prefix.clone();
            let failed_percent = cli.failed_percent;
            let publish_timeout = cli.publish_timeout;
            tokio::spawn(async move {
                let mut report = WorkerReport::default();
                while Instant::now() < deadline {
                    let number = sequence.fetch_add(1, Ordering::Relaxed);
                    let failed = number % 100 < failed_percent;
                    let event = build_event(&format!("{prefix}-c{worker}-{number}"), failed);
                    let publish_started = Instant::now();
                    let record = FutureRecord::to(settings.topic(event.event_type))
                        .key(event.task_id.as_str())
                        .payload(&event.payload)
                        .headers(message_headers(&event))
                        .timestamp(event.unix_time_millis());
                    let delivered = tokio::time::timeout(
                        publish_timeout,
                        producer.send(record, publish_timeout / 10),
                    )
                    .await;
                    match delivered {
                        Ok(Ok(_)) => report
                            .latencies_us
                            .push(publish_started.elapsed().as_micros() as u64),
                        Ok(Err((cause, _))) => {
                            report.failures += 1;
                            if report.failures == 1 {
                                eprintln!("Publish failed. worker={worker} cause={cause}");
                            }
                        }
                        Err(_) => report.failures += 1,
                    }
                }
                report
            })
        })
        .collect();
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.push(task.await?);
    }
    print_report(&reports, started.elapsed(), "delivered");
    Ok(())
}

/// Builds the event that the bridge builds for the callback `bench/callbacks.lua` sends for
/// `task_id`.
fn build_event(task_id: &str, failed: bool) -> Event {
    let body = if failed {
        format!(
            r#"{{"task_id":"{task_id}","status":"failed","error_message":"Content policy violation"}}"#
        )
    } else {
        format!(
            r#"{{"task_id":"{task_id}","status":"completed","data":{{"video_url":"https://cdn.example.com/o/{task_id}.mp4"}}}}"#
        )
    };
    let callback = Callback::parse(body.as_bytes()).expect("the benchmark callback is valid");
    Event::new(
        &callback,
        body.as_bytes(),
        "webhook-bridge",
        SystemTime::now(),
    )
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>, rdkafka::error::KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
}

async fn create_topics(
    brokers: &str,
    topics: &[String],
    partitions: i32,
) -> Result<(), Box<dyn std::error::Error>> {
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    for result in admin(brokers)?.create_topics(&new_topics, &options).await? {
        result.map_err(|(topic, code)| format!("creating topic {topic} failed: {code}"))?;
    }
    Ok(())
}

async fn delete_topics(brokers: &str, topics: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    if topics.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    for result in admin(brokers)?.delete_topics(&names, &options).await? {
        result.map_err(|(topic, code)| format!("deleting topic {topic} failed: {code}"))?;
    }
    Ok(())
}

/// Returns the number of messages in `topic`, or `None` when the topic does not exist. It
/// reads the topic from the beginning until nothing arrives for [`COUNT_IDLE`], because
/// tansu 0.6 reports high watermarks below the number of messages it returns.
fn count_messages(brokers: &str, topic: &str) -> Result<Option<u64>, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "webhook-bridge-bench-count")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Timeout::After(ADMIN_TIMEOUT))?;
    let found = metadata.topics().iter().find(|found| {
        found.name() == topic && found.error().is_none() && !found.partitions().is_empty()
    });
    let Some(found) = found else {
        return Ok(None);
    };
    let mut assignment = TopicPartitionList::new();
    for partition in found.partitions() {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    let started = Instant::now();
    let mut last_message = Instant::now();
    let mut total = 0;
    while last_message.elapsed() < COUNT_IDLE && started.elapsed() < COUNT_LIMIT {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                total += 1;
                last_message = Instant::now();
            }
            Some(Err(cause)) => return Err(cause),
            None => {}
        }
    }
    Ok(Some(total))
}
