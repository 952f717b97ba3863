//! The binary's startup checks: invalid configuration stops it with the key named.

use std::process::Command;

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
    let bridge = BridgeProcess::spawn(bridge_environment(&settings, port));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&http, &base).await;

    let response = http
        .post(format!("{base}/webhook"))
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
