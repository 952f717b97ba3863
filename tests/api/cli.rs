//! The binary's startup checks (invalid configuration stops it with the key named) and its
//! `healthcheck` subcommand.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::helpers::*;

fn run_with(variables: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_webhook-bridge"))
        .envs(variables.iter().copied())
        .env("RUST_LOG", "info")
        .output()
        .expect("bridge binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn unknown_key_stops_startup() {
    let (code, log) = run_with(&[("WEBHOOK_BRIDGE__SERVER__LISTN", "0.0.0.0:1")]);
    assert_eq!(code, Some(2));
    assert!(log.contains("server.listn"), "{log}");
    assert!(log.contains("unknown field"), "{log}");
}

#[test]
fn invalid_value_stops_startup() {
    let (code, log) = run_with(&[("WEBHOOK_BRIDGE__BROKER__PUBLISH_TIMEOUT_MS", "soon")]);
    assert_eq!(code, Some(2));
    assert!(log.contains("broker.publish_timeout_ms"), "{log}");
}

#[test]
fn invalid_url_error_hides_password() {
    let (code, log) = run_with(&[(
        "WEBHOOK_BRIDGE__RABBITMQ__URL",
        "http://bridge:hunter2@mq:5672",
    )]);
    assert_eq!(code, Some(2));
    assert!(log.contains("rabbitmq.url"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}

#[test]
fn config_error_is_printed_as_text() {
    // log.format cannot apply before the settings it belongs to have loaded.
    let (code, log) = run_with(&[
        ("WEBHOOK_BRIDGE__LOG__FORMAT", "json"),
        ("WEBHOOK_BRIDGE__SERVER__LISTN", "0.0.0.0:1"),
    ]);
    assert_eq!(code, Some(2));
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.starts_with('['), "{log}");
    assert!(log.contains(" ERROR "), "{log}");
    assert!(log.contains("server.listn"), "{log}");
}

#[test]
fn kafka_client_rejection_stops_startup() {
    // librdkafka checks this combination only when the producer is created.
    let (code, log) = run_with(&[
        ("WEBHOOK_BRIDGE__SERVER__LISTEN", "127.0.0.1:0"),
        ("WEBHOOK_BRIDGE__BROKER__KIND", "kafka"),
        ("WEBHOOK_BRIDGE__KAFKA__OPTIONS__MAX_IN_FLIGHT", "100"),
    ]);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("invalid configuration: kafka.options: Client creation error"),
        "{log}"
    );
    assert!(log.contains("max.in.flight"), "{log}");
}

#[test]
fn missing_config_file_stops_startup() {
    let output = Command::new(env!("CARGO_BIN_EXE_webhook-bridge"))
        .args(["--config", "/nonexistent/webhook-bridge.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("/nonexistent/webhook-bridge.toml"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_logs_cause_without_password() {
    let settings = test_settings();
    let port = free_port();
    // Nothing listens on this port, so every connection attempt fails.
    let broker_url = format!("amqp://bridge:s3cret-pass@127.0.0.1:{}/%2f", free_port());
    let bridge = BridgeProcess::spawn([
        (
            "WEBHOOK_BRIDGE__SERVER__LISTEN".to_owned(),
            format!("127.0.0.1:{port}"),
        ),
        ("WEBHOOK_BRIDGE__SERVER__WORKERS".to_owned(), "1".to_owned()),
        ("WEBHOOK_BRIDGE__RABBITMQ__URL".to_owned(), broker_url),
        (
            "WEBHOOK_BRIDGE__RABBITMQ__CONNECT_TIMEOUT_MS".to_owned(),
            "300".to_owned(),
        ),
        (
            "WEBHOOK_BRIDGE__REDIS__KEY_PREFIX".to_owned(),
            settings.redis.key_prefix.clone(),
        ),
    ]);

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let ready = loop {
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await {
            break response;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "bridge started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["broker"], "down");
    assert_eq!(body["redis"], "up");

    let task_id = unique_task_id();
    let response = http
        .post(format!("{base}/webhook"))
        .header("content-type", "application/json")
        .body(completed_body(&task_id))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let text = response.text().await.unwrap();
    assert!(!text.contains("s3cret-pass"), "{text}");

    let output = bridge.stop_with("TERM").await;
    assert!(output.status.success(), "exit status {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stderr);

    let error_line = log
        .lines()
        .find(|line| line.contains("ERROR") && line.contains("Answering 503"))
        .unwrap_or_else(|| panic!("no error line for the 503: {log}"));
    assert!(
        error_line.contains(&format!("task_id={task_id}")),
        "{error_line}"
    );
    assert!(
        error_line.contains("broker connection is down"),
        "{error_line}"
    );
    assert!(log.contains("Connecting to RabbitMQ failed"), "{log}");
    assert!(log.contains("bridge:***@127.0.0.1"), "{log}");
    assert!(
        !log.contains("s3cret-pass"),
        "the password never reaches the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_cleanly() {
    let settings = test_settings();
    let port = free_port();
    // With a token configured, the bridge has no reason to warn at startup either.
    let token = "clean-stop-0123456789abcdef0123456789";
    let mut environment = bridge_environment(&settings, port);
    environment.push(("WEBHOOK_BRIDGE__AUTH__TOKENS".to_owned(), token.to_owned()));
    let bridge = BridgeProcess::spawn(environment);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&http, &base).await;

    let response = http
        .post(format!("{base}/webhook/{token}"))
        .header("content-type", "application/json")
        .body(completed_body(&unique_task_id()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let output = bridge.stop_with("INT").await;
    assert!(output.status.success(), "exit status {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("SIGINT received"), "{log}");
    assert!(!log.contains("WARN"), "a clean stop logs no warning: {log}");
    assert!(log.contains("RabbitMQ connection closed."), "{log}");
    assert!(log.contains("Stopped."), "{log}");
    remove_test_data(&settings).await;
}

/// Runs `webhook-bridge healthcheck` with `args` and `variables`, off the async runtime.
async fn run_healthcheck(args: &[&str], variables: &[(&str, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_webhook-bridge"));
    command
        .arg("healthcheck")
        .args(args)
        .envs(variables.iter().map(|(name, value)| (name, value)))
        .env("RUST_LOG", "debug");
    tokio::task::spawn_blocking(move || command.output().expect("healthcheck runs"))
        .await
        .expect("healthcheck task")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_passes_against_running_bridge() {
    let app = spawn_app().await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();

    let output = run_healthcheck(
        &[],
        &[(
            "WEBHOOK_BRIDGE__SERVER__LISTEN",
            format!("127.0.0.1:{port}"),
        )],
    )
    .await;
    let log = stderr_of(&output);
    assert_eq!(output.status.code(), Some(0), "{log}");
    assert_eq!(log, "", "a passing check prints nothing");
    assert!(output.stdout.is_empty(), "the configuration is not printed");
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_fails_on_closed_port() {
    let port = free_port();
    let output = run_healthcheck(
        &[],
        &[("WEBHOOK_BRIDGE__SERVER__LISTEN", format!("0.0.0.0:{port}"))],
    )
    .await;
    let log = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert_eq!(log.lines().count(), 1, "one line: {log}");
    assert!(
        log.contains(&format!("connecting to 127.0.0.1:{port} failed")),
        "{log}"
    );
    assert!(output.stdout.is_empty(), "the configuration is not printed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_fails_on_non_200_status() {
    // A server that responds 503 to one request and returns the request it read.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the healthcheck connected");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => panic!("accept failed: {error}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut request = Vec::new();
        let mut chunk = [0_u8; 512];
        while !request.ends_with(b"\r\n\r\n") {
            let read = stream.read(&mut chunk).unwrap();
            assert!(
                read > 0,
                "the client closed before the end of the request head"
            );
            request.extend_from_slice(&chunk[..read]);
        }
        stream
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        String::from_utf8(request).unwrap()
    });

    // The listen address comes from the file, after the subcommand.
    let dir = std::env::temp_dir().join(format!("webhook-bridge-cli-{}", unique_task_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bridge.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let output = run_healthcheck(&["--config", config.to_str().unwrap()], &[]).await;
    std::fs::remove_dir_all(&dir).unwrap();

    let request = server.join().expect("test server");
    assert!(
        request.starts_with("GET /healthz HTTP/1.1\r\n"),
        "{request}"
    );
    let log = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert_eq!(log.lines().count(), 1, "one line: {log}");
    assert!(log.contains("HTTP/1.1 503 Service Unavailable"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_reports_invalid_configuration() {
    let output = run_healthcheck(
        &[],
        &[("WEBHOOK_BRIDGE__SERVER__LISTEN", "localhost".to_owned())],
    )
    .await;
    let log = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert_eq!(log.lines().count(), 1, "one line: {log}");
    assert!(log.contains("server.listen"), "{log}");
}
