//! Throughput ceiling for the load benchmark. It publishes CloudEvents documents shaped like
//! the bridge's straight to RabbitMQ, with publisher confirms, the mandatory flag and
//! persistent delivery, on one connection and one confirm-mode channel as the bridge does,
//! but with no HTTP and no Redis. `bench/run.sh` also runs it with `--delete-only` to remove
//! a run's topology.

#[path = "report.rs"]
mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use report::{WorkerReport, print_report};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::timeout;

/// AMQP delivery mode that makes the broker write the message to disk.
const PERSISTENT: u8 = 2;

/// AMQP reply code of a normal close.
const REPLY_SUCCESS: u16 = 200;

const COMPLETED: &str = "task.completed";
const FAILED: &str = "task.failed";

/// Publishes confirmed events straight to RabbitMQ and reports publishes per second.
#[derive(Parser)]
struct Cli {
    /// AMQP URL of the broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Durable topic exchange to declare and publish to (or to delete).
    #[arg(long)]
    exchange: String,
    /// Durable queue bound to routing key `task.completed`.
    #[arg(long)]
    queue_completed: String,
    /// Durable queue bound to routing key `task.failed`.
    #[arg(long)]
    queue_failed: String,
    /// Number of publishes in flight at once, each waiting for its own confirm.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to publish, such as `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Maximum number of publishes, which ends the run early when reached.
    #[arg(long, default_value_t = 10_000_000)]
    max_publishes: u64,
    /// Start of every task id, `<prefix>-c<task number>-<sequence>`. A prefix as long as the
    /// wrk run id makes the events as long as the bridge's.
    #[arg(long, default_value = "ceiling")]
    task_id_prefix: String,
    /// Share of events of type `task.failed`, in percent. The rest are `task.completed`.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=100))]
    failed_percent: u64,
    /// Time allowed for one publish, confirm included. The bridge's default is 5 s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    publish_timeout: Duration,
    /// Keep the exchange and queues after publishing.
    #[arg(long)]
    keep_topology: bool,
    /// Delete the exchange and both queues, print the message count of each queue, and exit
    /// without publishing.
    #[arg(long)]
    delete_only: bool,
}

/// The CloudEvents 1.0 structured-mode document, with the same attributes as the bridge's.
#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    source: &'static str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    data: &'a RawValue,
}

/// One event ready to publish.
struct Event {
    id: String,
    event_type: &'static str,
    payload: Vec<u8>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    if cli.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let properties = ConnectionProperties::default()
        .with_connection_name("webhook-bridge-ceiling".to_owned().into());
    let connection = Connection::connect(&cli.url, properties).await?;

    if cli.delete_only {
        delete_topology(&connection, &cli).await?;
        connection.close(REPLY_SUCCESS, "OK".into()).await?;
        return Ok(());
    }

    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    declare_topology(&channel, &cli).await?;

    let started = Instant::now();
    let reports = run_load(&channel, &cli).await?;
    let elapsed = started.elapsed();
    print_report(&reports, elapsed, "confirmed");

    if !cli.keep_topology {
        delete_topology(&connection, &cli).await?;
    }
    connection.close(REPLY_SUCCESS, "OK".into()).await?;
    Ok(())
}

/// Declares the bridge's topology: a durable topic exchange with two bound durable queues.
async fn declare_topology(channel: &Channel, cli: &Cli) -> Result<(), lapin::Error> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            cli.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;

    for (queue, routing_key) in [
        (&cli.queue_completed, COMPLETED),
        (&cli.queue_failed, FAILED),
    ] {
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.as_str().into(), durable_queue, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                cli.exchange.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Deletes both queues and the exchange, printing `deleted queue=NAME messages=N` for each
/// queue. Each deletion uses a channel of its own because a failed one closes its channel.
async fn delete_topology(connection: &Connection, cli: &Cli) -> Result<(), lapin::Error> {
    for queue in [&cli.queue_completed, &cli.queue_failed] {
        let channel = connection.create_channel().await?;
        let messages = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        println!("deleted queue={queue} messages={messages}");
        channel.close(REPLY_SUCCESS, "OK".into()).await?;
    }
    let channel = connection.create_channel().await?;
    channel
        .exchange_delete(
            cli.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    println!("deleted exchange={}", cli.exchange);
    channel.close(REPLY_SUCCESS, "OK".into()).await?;
    Ok(())
}

/// Runs `cli.concurrency` tasks that each publish one event at a time and wait for its
/// confirm, until the duration has passed or `cli.max_publishes` were started.
async fn run_load(
    channel: &Channel,
    cli: &Cli,
) -> Result<Vec<WorkerReport>, tokio::task::JoinError> {
    let deadline = Instant::now() + cli.duration;
    let started_publishes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(cli.concurrency);
    for worker in 0..cli.concurrency {
        let load = Load {
            channel: channel.clone(),
            exchange: cli.exchange.clone(),
            task_id_prefix: cli.task_id_prefix.clone(),
            worker,
            deadline,
            max_publishes: cli.max_publishes,
            failed_percent: cli.failed_percent,
            publish_timeout: cli.publish_timeout,
            started_publishes: started_publishes.clone(),
        };
        tasks.push(tokio::spawn(load.run()));
    }

    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.push(task.await?);
    }
    Ok(reports)
}

/// The work of one publishing task.
struct Load {
    channel: Channel,
    exchange: String,
    task_id_prefix: String,
    worker: usize,
    deadline: Instant,
    max_publishes: u64,
    failed_percent: u64,
    publish_timeout: Duration,
    /// Publishes started by all tasks together, which bounds the run by count.
    started_publishes: Arc<AtomicU64>,
}

impl Load {
    async fn run(self) -> WorkerReport {
        let mut report = WorkerReport::default();
        while Instant::now() < self.deadline {
            let sequence = self.started_publishes.fetch_add(1, Ordering::Relaxed);
            if sequence >= self.max_publishes {
                break;
            }
            let failed = sequence % 100 < self.failed_percent;
            let task_id = format!("{}-c{}-{sequence}", self.task_id_prefix, self.worker);
            let event = build_event(&task_id, failed);

            let publish_started = Instant::now();
            match self.publish(&event).await {
                Ok(()) => {
                    let latency = publish_started.elapsed().as_micros();
                    report.latencies_us.push(latency as u64);
                }
                Err(cause) => {
                    report.failures += 1;
                    if report.failures == 1 {
                        eprintln!("Publish failed. worker={} cause={cause}", self.worker);
                    }
                    // A closed channel fails every later publish at once, so this task stops.
                    if !self.channel.status().connected() {
                        break;
                    }
                }
            }
        }
        report
    }

    /// Publishes `event` as the bridge does and waits for the broker's confirm.
    async fn publish(&self, event: &Event) -> Result<(), String> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let properties = BasicProperties::default()
            .with_content_type("application/cloudevents+json; charset=utf-8".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(event.id.clone().into())
            .with_type(event.event_type.into())
            .with_timestamp(unix_seconds())
            .with_app_id("webhook-bridge".into());
        let confirmation = timeout(self.publish_timeout, async {
            self.channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    event.event_type.into(),
                    options,
                    &event.payload,
                    properties,
                )
                .await?
                .await
        })
        .await;

        match confirmation {
            Err(_) => Err(format!("no confirm within {:?}", self.publish_timeout)),
            Ok(Err(cause)) => Err(cause.to_string()),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(format!(
                "event returned as unroutable: {} {}",
                returned.reply_code, returned.reply_text
            )),
            Ok(Ok(Confirmation::Nack(_))) => Err("broker sent a negative acknowledgement".into()),
            Ok(Ok(Confirmation::NotRequested)) => Err("confirms are not enabled".into()),
        }
    }
}

/// Builds the event the bridge would build for the callback that `bench/callbacks.lua` sends
/// for `task_id`.
fn build_event(task_id: &str, failed: bool) -> Event {
    let (status, event_type) = if failed {
        ("failed", FAILED)
    } else {
        ("completed", COMPLETED)
    };
    let body = if failed {
        format!(
            r#"{{"task_id":"{task_id}","status":"failed","error_message":"Content policy violation"}}"#
        )
    } else {
        format!(
            r#"{{"task_id":"{task_id}","status":"completed","data":{{"video_url":"https://cdn.example.com/o/{task_id}.mp4"}}}}"#
        )
    };
    let data = RawValue::from_string(body).expect("the callback body is valid JSON");
    let id = format!("{task_id}:{status}");
    let document = CloudEvent {
        specversion: "1.0",
        id: &id,
        event_type,
        source: "webhook-bridge",
        subject: task_id,
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        datacontenttype: "application/json",
        data: &data,
    };
    let payload = serde_json::to_vec(&document).expect("string fields always serialise");
    Event {
        id,
        event_type,
        payload,
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}
