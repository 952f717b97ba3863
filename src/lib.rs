//! webhook-bridge receives task callbacks from AI media-generation APIs and publishes them
//! as CloudEvents to a message broker, responding 2xx only once the broker confirmed them.
//!
//! A request flows through [`routes`] ([`auth`], media type, size), [`callback`] (validation),
//! [`event`] (the CloudEvents document), [`delivery`] with [`dedup`] (Redis claim) and a
//! [`publisher`] (RabbitMQ or Kafka). [`config`] and [`startup`] build it; [`error`] maps
//! failures to HTTP responses, and [`metrics`] counts them for Prometheus. [`dead_letter`]
//! keeps rejected bodies. [`logging`] lays out the log lines, [`log_throttle`] limits repeated
//! ones, and [`healthcheck`] is the client side of the `healthcheck` subcommand.

pub mod auth;
pub mod callback;
pub mod config;
pub mod dead_letter;
pub mod dedup;
pub mod delivery;
pub mod error;
pub mod event;
pub mod healthcheck;
pub mod log_throttle;
pub mod logging;
pub mod metrics;
pub mod publisher;
pub mod routes;
pub mod secret;
pub mod startup;

pub use config::Settings;
pub use startup::Application;
