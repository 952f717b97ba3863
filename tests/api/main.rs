//! Integration tests against the real Redis (127.0.0.1:6379) and RabbitMQ
//! (127.0.0.1:5672, guest/guest). Each test has its own exchange, queues and key prefix.

mod helpers;
mod proxy;

mod callbacks;
mod cli;
mod dedup;
mod duplicates;
mod failures;
mod rejections;
mod shutdown;
mod tls;
