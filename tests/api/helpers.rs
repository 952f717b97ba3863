//! Starts the bridge in-process on port 0 with its own exchange, queues and Redis key
//! prefix, and gives tests the tools to inspect what it published and stored.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use redis::AsyncCommands;
use serde_json::Value;
use tokio::task::JoinHandle;
use webhook_bridge::{Application, Settings};

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_ADDRESS: &str = "127.0.0.1:6379";
pub const AMQP_ADDRESS: &str = "127.0.0.1:5672";

pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub http: reqwest::Client,
    pub redis: redis::aio::MultiplexedConnection,
    pub amqp: Channel,
    amqp_connection: Connection,
    handle: ServerHandle,
    server: JoinHandle<std::io::Result<()>>,
}

/// A message taken from a queue.
#[derive(Debug)]
pub struct Received {
    pub routing_key: String,
    pub properties: lapin::BasicProperties,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("event body is JSON")
    }
}

/// Settings that isolate one test: its own exchange, queues and key prefix, short
/// timeouts, one worker.
pub fn test_settings() -> Settings {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let id = &id[..12];
    let mut settings = Settings::default();
    settings.server.listen = "127.0.0.1:0".to_owned();
    settings.server.workers = 1;
    settings.server.access_log = false;
    settings.server.shutdown_timeout_secs = 10;
    settings.server.retry_after_secs = 7;
    settings.broker.publish_timeout_ms = 1_500;
    settings.redis.key_prefix = format!("test:{id}:");
    settings.redis.response_timeout_ms = 500;
    settings.redis.connect_timeout_ms = 500;
    settings.redis.pending_ttl_ms = 10_000;
    settings.redis.pending_wait_ms = 2_000;
    settings.rabbitmq.exchange = format!("test.{id}");
    settings.rabbitmq.queue_completed = format!("test.{id}.completed");
    settings.rabbitmq.queue_failed = format!("test.{id}.failed");
    settings.rabbitmq.queue_invalid = format!("test.{id}.invalid");
    settings.rabbitmq.connect_timeout_ms = 2_000;
    settings.rabbitmq.reconnect_min_delay_ms = 50;
    settings.rabbitmq.reconnect_max_delay_ms = 500;
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the bridge with `customize` applied to the isolated test settings.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut settings = test_settings();
    customize(&mut settings);
    settings.validate().expect("test settings are valid");

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    let app = Application::build(settings.clone(), listener)
        .await
        .expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());

    let redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("test connection to Redis");
    let amqp_connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("test connection to RabbitMQ");
    let amqp = amqp_connection.create_channel().await.unwrap();

    TestApp {
        address,
        settings,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        redis,
        amqp,
        amqp_connection,
        handle,
        server,
    }
}

impl TestApp {
    pub fn webhook_url(&self) -> String {
        format!("{}{}", self.address, self.settings.server.webhook_path)
    }

    /// Posts `body` as `application/json` to the webhook.
    pub async fn post_callback(&self, body: &str) -> reqwest::Response {
        self.post_raw(body.as_bytes().to_vec(), Some("application/json"))
            .await
    }

    pub async fn post_raw(&self, body: Vec<u8>, content_type: Option<&str>) -> reqwest::Response {
        let mut request = self.http.post(self.webhook_url()).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.expect("request reaches the bridge")
    }

    /// Sends `GET <path>` to the bridge.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request reaches the bridge")
    }

    pub fn completed_queue(&self) -> &str {
        &self.settings.rabbitmq.queue_completed
    }

    pub fn failed_queue(&self) -> &str {
        &self.settings.rabbitmq.queue_failed
    }

    pub fn invalid_queue(&self) -> &str {
        &self.settings.rabbitmq.queue_invalid
    }

    /// Takes every message waiting in `queue`. A 2xx from the bridge means the broker
    /// confirmed the event, so it is already in the queue when this runs.
    pub async fn drain(&self, queue: &str) -> Vec<Received> {
        let mut received = Vec::new();
        loop {
            let message = self
                .amqp
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            let Some(message) = message else {
                return received;
            };
            let delivery = message.delivery;
            received.push(Received {
                routing_key: delivery.routing_key.to_string(),
                properties: delivery.properties,
                body: delivery.data,
            });
        }
    }

    /// Counts the messages in both queues, taking them out.
    pub async fn drain_all(&self) -> usize {
        let completed = self.drain(self.completed_queue()).await.len();
        let failed = self.drain(self.failed_queue()).await.len();
        completed + failed
    }

    pub fn dedup_key(&self, task_id: &str, status: &str) -> String {
        format!("{}{task_id}:{status}", self.settings.redis.key_prefix)
    }

    /// Lists every Redis key under this test's prefix.
    pub async fn keys(&self) -> Vec<String> {
        let mut redis = self.redis.clone();
        let pattern = format!("{}*", self.settings.redis.key_prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut iterator = redis.scan_match::<_, String>(pattern).await.unwrap();
        while let Some(key) = futures_util::StreamExt::next(&mut iterator).await {
            keys.push(key.expect("SCAN reply"));
        }
        keys
    }

    pub async fn redis_get(&self, key: &str) -> Option<String> {
        let mut redis = self.redis.clone();
        redis.get(key).await.unwrap()
    }

    /// Milliseconds to live of `key`: -1 without a TTL, -2 when missing.
    pub async fn pttl(&self, key: &str) -> i64 {
        let mut redis = self.redis.clone();
        redis.pttl(key).await.unwrap()
    }

    /// Declares a durable queue of the test's own, for routing checks.
    pub async fn declare_queue(&self, queue: &str) {
        self.amqp
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue.declare");
    }

    /// Polls `/readyz` until it returns `expected`, for at most `limit`.
    pub async fn wait_ready(&self, expected: u16, limit: Duration) {
        let started = Instant::now();
        loop {
            let status = self
                .http
                .get(format!("{}/readyz", self.address))
                .send()
                .await
                .map(|response| response.status().as_u16())
                .unwrap_or(0);
            if status == expected {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "/readyz answered {status}, not {expected}, for {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server gracefully and waits for it to finish.
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }

    /// Waits for the server task and returns its result.
    pub async fn join(self) -> std::io::Result<()> {
        let server = self.server;
        server.await.expect("server task")
    }

    /// Stops the bridge and removes the test's queues, exchange and keys.
    pub async fn teardown(self) {
        self.stop().await;
        remove_test_data(&self.settings).await;
        let _ = self.amqp_connection.close(200, "OK".into()).await;
    }
}

pub fn completed_body(task_id: &str) -> String {
    format!(
        r#"{{"task_id":"{task_id}","status":"completed","data":{{"video_url":"https://cdn.example.com/outputs/{task_id}.mp4"}}}}"#
    )
}

pub fn failed_body(task_id: &str) -> String {
    format!(
        r#"{{"task_id":"{task_id}","status":"failed","error_message":"Content policy violation"}}"#
    )
}

pub fn unique_task_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub async fn response_json(response: reqwest::Response) -> Value {
    response.json().await.expect("JSON answer")
}

/// Returns a loopback port that was free a moment ago, for a bridge process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// RabbitMQ URL through `proxy`.
pub fn amqp_through(proxy: &crate::proxy::Proxy) -> webhook_bridge::secret::SecretUrl {
    webhook_bridge::secret::SecretUrl::new_unchecked(&format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        proxy.port()
    ))
}

/// Redis URL through `proxy`.
pub fn redis_through(proxy: &crate::proxy::Proxy) -> webhook_bridge::secret::SecretUrl {
    webhook_bridge::secret::SecretUrl::new_unchecked(&format!("redis://127.0.0.1:{}", proxy.port()))
}

/// Environment that points a bridge process at the test's own exchange, queues and key
/// prefix, listening on `port`.
pub fn bridge_environment(settings: &Settings, port: u16) -> Vec<(String, String)> {
    [
        ("SERVER__LISTEN", format!("127.0.0.1:{port}")),
        ("SERVER__WORKERS", "2".to_owned()),
        ("SERVER__SHUTDOWN_TIMEOUT_SECS", "15".to_owned()),
        ("REDIS__KEY_PREFIX", settings.redis.key_prefix.clone()),
        ("RABBITMQ__EXCHANGE", settings.rabbitmq.exchange.clone()),
        (
            "RABBITMQ__QUEUE_COMPLETED",
            settings.rabbitmq.queue_completed.clone(),
        ),
        (
            "RABBITMQ__QUEUE_FAILED",
            settings.rabbitmq.queue_failed.clone(),
        ),
        (
            "RABBITMQ__QUEUE_INVALID",
            settings.rabbitmq.queue_invalid.clone(),
        ),
    ]
    .into_iter()
    .map(|(key, value)| (format!("WEBHOOK_BRIDGE__{key}"), value))
    .collect()
}

/// Polls `base`/healthz until a bridge process serves HTTP, for at most 15 seconds.
pub async fn wait_until_serving(http: &reqwest::Client, base: &str) {
    let started = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "bridge at {base} serves HTTP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `base`/readyz until a bridge process returns 200, for at most 15 seconds.
pub async fn wait_until_ready(http: &reqwest::Client, base: &str) {
    let started = Instant::now();
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|response| response.status() == 200) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "bridge at {base} became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes the queues, exchange and Redis keys of `settings`, for tests whose bridge ran as a
/// separate process or has already stopped.
pub async fn remove_test_data(settings: &Settings) {
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("test connection to RabbitMQ");
    let channel = connection.create_channel().await.unwrap();
    let rabbitmq = &settings.rabbitmq;
    for queue in [
        &rabbitmq.queue_completed,
        &rabbitmq.queue_failed,
        &rabbitmq.queue_invalid,
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            rabbitmq.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
    let _ = connection.close(200, "OK".into()).await;

    let mut redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("test connection to Redis");
    let pattern = format!("{}*", settings.redis.key_prefix);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut redis)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis.del(keys).await.unwrap();
    }
}

/// The bridge binary running as a child process, with RUST_LOG=info and stderr captured.
/// Dropping it before `stop_with` kills the process, so that a failed test leaves none
/// running.
pub struct BridgeProcess {
    child: Option<std::process::Child>,
}

impl BridgeProcess {
    /// Starts the binary with `variables` added to the environment.
    pub fn spawn(variables: impl IntoIterator<Item = (String, String)>) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_webhook-bridge"))
            .envs(variables)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("bridge binary starts");
        Self { child: Some(child) }
    }

    /// Sends `signal` (such as `TERM` or `INT`) and waits for the process to exit.
    pub async fn stop_with(mut self, signal: &str) -> std::process::Output {
        let id = self.child.as_ref().expect("the process is running").id();
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), id.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIG{signal} was delivered");
        let child = self.child.take().expect("the process is running");
        tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("wait task")
            .expect("bridge output")
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
