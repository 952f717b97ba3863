//! A minimal consumer: prints the CloudEvents waiting in a queue and acknowledges them.
//!
//!     cargo run --example consume -- task.completed
//!
//! `AMQP_URL` selects the broker (default `amqp://guest:guest@127.0.0.1:5672/%2f`). The
//! consumer stops when the queue has been idle for `--idle-ms` milliseconds.

use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

#[derive(Parser)]
struct Args {
    /// Queue to read, such as task.completed or task.failed.
    queue: String,
    /// Stop after this many milliseconds without a message.
    #[arg(long, default_value_t = 2_000)]
    idle_ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(32, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            args.queue.as_str().into(),
            "webhook-bridge-example".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let idle = Duration::from_millis(args.idle_ms);
    let mut count = 0;
    while let Ok(Some(delivery)) = tokio::time::timeout(idle, consumer.next()).await {
        let delivery = delivery?;
        println!(
            "{} {}",
            delivery.routing_key,
            String::from_utf8_lossy(&delivery.data)
        );
        // Ack only after the event is handled, so a crash leaves it in the queue.
        delivery.ack(BasicAckOptions::default()).await?;
        count += 1;
    }
    eprintln!("Read {count} event(s) from {}.", args.queue);
    connection.close(200, "OK".into()).await?;
    Ok(())
}
