//! Log output of the binary: `log.format = "json"` writes one object per line with the
//! structured fields, and the access log leaves out query strings and headers in both formats.

use serde_json::Value;

use crate::helpers::*;

/// Parses every line of `log` as a JSON object with the fields that each line has.
fn parse_json_lines(log: &str) -> Vec<Value> {
    assert!(!log.is_empty(), "the bridge logged something");
    log.lines()
        .map(|line| {
            let object: Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("line is not JSON ({error}): {line}"));
            let time = object["time"]
                .as_str()
                .unwrap_or_else(|| panic!("time: {line}"));
            assert!(is_rfc3339_millis(time), "time {time} in {line}");
            for key in ["level", "target", "message"] {
                assert!(object[key].is_string(), "{key} in {line}");
            }
            object
        })
        .collect()
}

/// Matches `2026-03-01T12:34:56.789Z`: RFC 3339, UTC, milliseconds.
fn is_rfc3339_millis(time: &str) -> bool {
    let bytes = time.as_bytes();
    let pattern = b"dddd-dd-ddTdd:dd:dd.dddZ";
    bytes.len() == pattern.len()
        && bytes
            .iter()
            .zip(pattern)
            .all(|(&byte, &expected)| match expected {
                b'd' => byte.is_ascii_digit(),
                _ => byte == expected,
            })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_fields() {
    let settings = test_settings();
    let port = free_port();
    // Nothing listens on this port, so the broker stays down and callbacks get 503.
    let broker_port = free_port();
    let broker_url = format!("amqp://bridge:s3cret-pass@127.0.0.1:{broker_port}/%2f");
    let bridge = BridgeProcess::spawn([
        (
            "WEBHOOK_BRIDGE__SERVER__LISTEN".to_owned(),
            format!("127.0.0.1:{port}"),
        ),
        ("WEBHOOK_BRIDGE__SERVER__WORKERS".to_owned(), "1".to_owned()),
        ("WEBHOOK_BRIDGE__LOG__FORMAT".to_owned(), "json".to_owned()),
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
    wait_until_serving(&http, &base).await;

    let task_id = unique_task_id();
    let response = http
        .post(format!("{base}/webhook"))
        .header("content-type", "application/json")
        .body(completed_body(&task_id))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);

    let output = bridge.stop_with("TERM").await;
    assert!(output.status.success(), "exit status {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        !log.contains("s3cret-pass"),
        "the password never reaches the log"
    );
    let lines = parse_json_lines(&log);

    let failure = lines
        .iter()
        .find(|line| line["message"] == "Answering 503: callback not forwarded.")
        .unwrap_or_else(|| panic!("no line for the 503: {log}"));
    assert_eq!(failure["level"], "ERROR");
    assert_eq!(failure["target"], "webhook_bridge::routes::webhook");
    assert_eq!(failure["task_id"], task_id.as_str());
    assert_eq!(failure["event_type"], "task.completed");
    assert_eq!(failure["retriable"], true);
    let cause = failure["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("broker connection is down"), "{failure}");

    let connecting = lines
        .iter()
        .find(|line| {
            line["message"]
                .as_str()
                .unwrap()
                .starts_with("Connecting to RabbitMQ failed")
        })
        .unwrap_or_else(|| panic!("no line for the broker connection: {log}"));
    assert_eq!(
        connecting["url"],
        format!("amqp://bridge:***@127.0.0.1:{broker_port}/%2f")
    );
    assert!(connecting["attempt"].is_u64(), "{connecting}");

    let starting = lines
        .iter()
        .find(|line| {
            line["message"]
                .as_str()
                .unwrap()
                .starts_with("Starting webhook-bridge")
        })
        .unwrap_or_else(|| panic!("no startup line: {log}"));
    let config: Value = serde_json::from_str(starting["config"].as_str().unwrap()).unwrap();
    assert_eq!(config["log"]["format"], "json");
    remove_test_data(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_hides_query_and_headers() {
    for format in ["text", "json"] {
        let settings = test_settings();
        let port = free_port();
        let mut environment = bridge_environment(&settings, port);
        environment.extend([
            ("WEBHOOK_BRIDGE__LOG__FORMAT".to_owned(), format.to_owned()),
            (
                "WEBHOOK_BRIDGE__SERVER__ACCESS_LOG".to_owned(),
                "true".to_owned(),
            ),
        ]);
        let bridge = BridgeProcess::spawn(environment);
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        wait_until_ready(&http, &base).await;

        let health = http
            .get(format!("{base}/healthz?token=secret-value"))
            .header("authorization", "Bearer secret-value")
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        let callback = http
            .post(format!("{base}/webhook?token=secret-value"))
            .header("authorization", "Bearer secret-value")
            .header("content-type", "application/json")
            .body(completed_body(&unique_task_id()))
            .send()
            .await
            .unwrap();
        assert_eq!(callback.status(), 200);

        let output = bridge.stop_with("TERM").await;
        assert!(output.status.success(), "exit status {:?}", output.status);
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!log.contains("secret-value"), "{format}: {log}");
        assert!(!log.contains("token="), "{format}: {log}");
        let access_lines: Vec<String> = if format == "json" {
            parse_json_lines(&log)
                .into_iter()
                .filter(|line| line["target"] == "actix_web::middleware::logger")
                .map(|line| line["message"].as_str().unwrap().to_owned())
                .collect()
        } else {
            log.lines()
                .filter(|line| line.contains("actix_web::middleware::logger"))
                .map(str::to_owned)
                .collect()
        };
        for request in [r#""GET /healthz" 200"#, r#""POST /webhook" 200"#] {
            assert!(
                access_lines.iter().any(|line| line.contains(request)),
                "{format}: no access log line for {request}: {log}"
            );
        }
        remove_test_data(&settings).await;
    }
}

/// With `RUST_LOG=trace`, lapin traces every AMQP frame, including the StartOk frame whose
/// bytes hold the user and password (`\0guest\0guest`). Those records are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_level_keeps_the_broker_password_out() {
    let settings = test_settings();
    let port = free_port();
    // The output goes to a file: at trace level it outgrows a pipe that is read only at exit.
    let log_path = std::env::temp_dir().join(format!("webhook-bridge-trace-{port}.log"));
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_webhook-bridge"))
        .envs(bridge_environment(&settings, port))
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("bridge binary starts");
    let http = reqwest::Client::new();
    wait_until_ready(&http, &format!("http://127.0.0.1:{port}")).await;
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("wait task")
        .expect("exit status");
    let log = std::fs::read_to_string(&log_path).expect("log text");
    std::fs::remove_file(&log_path).ok();
    remove_test_data(&settings).await;

    assert!(status.success(), "exit status {status:?}");
    assert!(log.contains("TRACE"), "the bridge logged at trace level");
    // "guest" as the decimal bytes that lapin's frame traces print.
    let password_bytes = "103, 117, 101, 115, 116";
    assert!(
        !log.contains(password_bytes),
        "the AMQP credentials appear in the trace output"
    );
}
