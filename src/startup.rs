//! Wiring: builds the dedup store, the publisher, the metrics registry and the HTTP server
//! from the settings, on a listener that the caller bound (tests bind port 0).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::KeepAlive;
use actix_web::middleware::{Condition, Logger};
use actix_web::{App, HttpServer, web};
use log::{info, warn};
use tokio::sync::Semaphore;

use crate::auth::Authenticator;
use crate::config::{BrokerKind, ConfigError, OnRedisUnavailable, Settings};
use crate::dead_letter::DeadLetters;
use crate::dedup::DedupStore;
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::publisher::{KafkaPublisher, Publisher, RabbitMqPublisher};
use crate::routes::{self, AppState};

/// Access log line: client address, method, path without query string, status, size,
/// duration. The query string and every request header (`Authorization`, cookies) are left
/// out because they may carry credentials, and so is a token in the path (see
/// [`redacted_path`]).
const ACCESS_LOG_FORMAT: &str = r#"%{client}xi "%{method}xi %{path}xi" %s %b %Dms"#;

/// Replaces the part of a request path that may hold a token. The webhook path followed by
/// a segment is the endpoint with a token in the path. Any other unknown path may be a
/// mistyped callback URL with a token in any form (`/webhook%2F<token>`, `/<token>`), so it
/// is logged as `/***` whole.
pub fn redacted_path(path: &str, webhook_path: &str) -> String {
    let known = [webhook_path, "/healthz", "/readyz", "/metrics", "/", ""];
    if known.contains(&path) {
        return path.to_owned();
    }
    if path
        .strip_prefix(webhook_path)
        .is_some_and(|rest| rest.starts_with('/'))
    {
        return format!("{webhook_path}/***");
    }
    "/***".to_owned()
}

/// Time allowed for closing the RabbitMQ connection after the HTTP server stopped. Kafka
/// takes `kafka.flush_timeout_ms` instead.
const RABBITMQ_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Startup failed before the server could serve.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("invalid Redis configuration: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("failed to start the HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// A built bridge, serving once awaited with [`Application::run_until_stopped`].
pub struct Application {
    port: u16,
    server: Server,
    publisher: Arc<dyn Publisher>,
    /// Time allowed for the broker client to deliver its buffered messages and close.
    broker_close_timeout: Duration,
}

impl Application {
    /// Connects to Redis and the broker (without failing when they are down) and prepares
    /// the HTTP server on `listener`.
    pub async fn build(settings: Settings, listener: TcpListener) -> Result<Self, StartupError> {
        let auth = Arc::new(Authenticator::new(&settings.auth)?);
        auth.log_summary();
        let dedup = DedupStore::new(&settings.redis)?;
        match dedup.ping().await {
            Ok(()) => info!(url:% = settings.redis.url; "Connected to Redis."),
            Err(cause) => warn!(
                url:% = settings.redis.url, cause:% = cause;
                "Redis check failed; answering 503 until it succeeds."
            ),
        }
        let publisher: Arc<dyn Publisher> = match settings.broker.kind {
            BrokerKind::Rabbitmq => Arc::new(
                RabbitMqPublisher::start(
                    settings.rabbitmq.clone(),
                    settings.dead_letter.enabled,
                    settings.broker.publish_timeout(),
                )
                .await,
            ),
            BrokerKind::Kafka => Arc::new(
                KafkaPublisher::start(settings.kafka.clone(), settings.broker.publish_timeout())
                    .await?,
            ),
        };

        let metrics = Arc::new(Metrics::new(settings.broker.kind));
        let delivery = Arc::new(Delivery::new(
            dedup.clone(),
            publisher.clone(),
            settings.redis.on_unavailable,
            metrics.clone(),
        ));
        let dead_letters = settings.dead_letter.enabled.then(|| {
            Arc::new(DeadLetters::new(
                publisher.clone(),
                metrics.clone(),
                settings.event.source.clone(),
                settings.server.max_in_flight,
            ))
        });
        let state = web::Data::new(AppState {
            auth: auth.clone(),
            delivery,
            dead_letters,
            dedup,
            publisher: publisher.clone(),
            metrics,
            max_body_bytes: settings.server.max_body_bytes,
            body_read_timeout: Duration::from_millis(settings.server.body_read_timeout_ms),
            source: settings.event.source.clone(),
            retry_after_secs: settings.server.retry_after_secs,
            in_flight_permits: Arc::new(Semaphore::new(settings.server.max_in_flight)),
            redis_required: settings.redis.on_unavailable != OnRedisUnavailable::Publish,
        });

        let workers = settings.server.worker_count();
        let connections_per_worker = settings.server.connections_per_worker(workers);
        // NOTE: actix-web 4.17 times only a connection's first request head, so keep-alive
        // (off by default) lets a client trickle the next head without any limit.
        let keep_alive = match settings.server.keep_alive_ms {
            0 => KeepAlive::Disabled,
            milliseconds => KeepAlive::Timeout(Duration::from_millis(milliseconds)),
        };
        let port = listener.local_addr()?.port();
        let server_settings = settings.server.clone();
        let webhook_path = server_settings.webhook_path.clone();
        let path_tokens = auth.accepts_tokens();
        let server = HttpServer::new(move || {
            let client_auth = auth.clone();
            let log_path = webhook_path.clone();
            let access_log = Logger::new(ACCESS_LOG_FORMAT)
                .custom_request_replace("method", |request| request.method().to_string())
                .custom_request_replace("path", move |request| {
                    redacted_path(request.path(), &log_path)
                })
                .custom_request_replace("client", move |request| {
                    client_auth
                        .client_address(request.request())
                        .map_or_else(|| "-".to_owned(), |client| client.to_string())
                });
            App::new()
                .app_data(state.clone())
                .wrap(Condition::new(server_settings.access_log, access_log))
                .configure(|config| routes::configure(config, &webhook_path, path_tokens))
        })
        .tcp_nodelay(true)
        .client_request_timeout(Duration::from_millis(
            settings.server.client_request_timeout_ms,
        ))
        .keep_alive(keep_alive)
        .max_connections(connections_per_worker)
        .workers(workers)
        .shutdown_timeout(settings.server.shutdown_timeout_secs)
        .listen(listener)?;
        info!(
            workers = workers, connections_per_worker = connections_per_worker,
            max_in_flight = settings.server.max_in_flight;
            "HTTP server prepared."
        );

        let broker_close_timeout = match settings.broker.kind {
            BrokerKind::Rabbitmq => RABBITMQ_CLOSE_TIMEOUT,
            BrokerKind::Kafka => Duration::from_millis(settings.kafka.flush_timeout_ms),
        };
        Ok(Self {
            port,
            server: server.run(),
            publisher,
            broker_close_timeout,
        })
    }

    /// Port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Handle to stop the server, as SIGTERM does.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped by SIGTERM, SIGINT or the handle, lets in-flight requests finish
    /// (bounded by `server.shutdown_timeout_secs`), then closes the broker connection.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        info!("HTTP server stopped; closing the broker connection.");
        self.publisher.shutdown(self.broker_close_timeout).await;
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_tokens_are_redacted() {
        let cases = [
            ("/webhook", "/webhook"),
            ("/webhook/0123456789abcdef0123456789abcdef", "/webhook/***"),
            ("/webhook/a/b", "/webhook/***"),
            ("/webhookx", "/***"),
            ("/healthz", "/healthz"),
            ("/webhok/0123456789abcdef", "/***"),
            ("/webhook%2F0123456789abcdef0123456789abcdef", "/***"),
            ("/0123456789abcdef0123456789abcdef", "/***"),
            ("/", "/"),
            ("", ""),
        ];
        for (path, logged) in cases {
            assert_eq!(redacted_path(path, "/webhook"), logged, "{path}");
        }
        assert_eq!(
            redacted_path("/hooks/media/secret-token", "/hooks/media"),
            "/hooks/media/***"
        );
        assert_eq!(redacted_path("/hooks/other", "/hooks/media"), "/***");
    }
}
