//! Integration tests against the real Redis (127.0.0.1:6379), RabbitMQ (127.0.0.1:5672,
//! guest/guest) and a Kafka-protocol broker (tansu on 127.0.0.1:9092), plus librdkafka's
//! mock cluster for Kafka faults. Each test has its own exchange, queues, topics and key
//! prefix.

mod helpers;
mod kafka_support;
mod proxy;

mod auth;
mod callbacks;
mod cli;
mod dead_letters;
mod dedup;
mod duplicates;
mod failures;
mod hostile;
mod kafka;
mod kafka_faults;
mod limits;
mod logs;
mod metrics;
mod openapi;
mod rejections;
mod replicas;
mod shutdown;
mod tls;
