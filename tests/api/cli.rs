//! The binary's startup checks: invalid configuration stops it with the key named.

use std::process::Command;

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
fn missing_config_file_stops_startup() {
    let output = Command::new(env!("CARGO_BIN_EXE_webhook-bridge"))
        .args(["--config", "/nonexistent/webhook-bridge.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("/nonexistent/webhook-bridge.toml"), "{log}");
}
