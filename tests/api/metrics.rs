//! `/metrics` counts each callback outcome, publish and Redis failure with the right labels,
//! reports broker and Redis health, and passes `promtool check metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::QueueDeleteOptions;
use tokio::io::AsyncWriteExt;

use crate::helpers::*;
use crate::kafka_support::{KAFKA_BROKERS, spawn_kafka_app, teardown_kafka};
use crate::proxy::{Mode, Proxy};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The samples of one scrape, keyed by series (`name{labels}`, exactly as written).
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// Returns the value of `series`, failing the test when it is missing.
    fn value(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(value) => *value,
            None => panic!("{series} is missing from /metrics:\n{}", self.text),
        }
    }

    /// Returns every series of the metric `name` whose value is not 0.
    fn nonzero(&self, name: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|(series, value)| {
                series
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{'))
                    && **value != 0.0
            })
            .map(|(series, value)| (series.clone(), *value))
            .collect()
    }
}

/// Sends `GET /metrics`, checks the status and content type, and parses the samples.
async fn scrape(app: &TestApp) -> Scrape {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], CONTENT_TYPE);
    let text = response.text().await.expect("metrics text");
    let samples = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let value = value.parse().expect("sample value is a number");
            (series.to_owned(), value)
        })
        .collect();
    Scrape { text, samples }
}

/// Polls `/metrics` until `series` has `expected`, for at most `limit`.
async fn wait_for_value(app: &TestApp, series: &str, expected: f64, limit: Duration) {
    let started = Instant::now();
    loop {
        let value = scrape(app).await.value(series);
        if value == expected {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{series} is {value}, not {expected}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn expected(series: &[(&str, f64)]) -> BTreeMap<String, f64> {
    series
        .iter()
        .map(|(series, value)| ((*series).to_owned(), *value))
        .collect()
}

/// Posts an accepted, a duplicate, an accepted `task.failed`, an invalid JSON and an invalid
/// callback, then a `task.failed` event with its queue deleted, so that it is unroutable.
async fn send_every_outcome(app: &TestApp) {
    let completed = completed_body(&unique_task_id());
    let accepted = response_json(app.post_callback(&completed).await).await;
    assert_eq!(accepted["status"], "accepted");
    let duplicate = response_json(app.post_callback(&completed).await).await;
    assert_eq!(duplicate["status"], "duplicate");
    let failed = response_json(app.post_callback(&failed_body(&unique_task_id())).await).await;
    assert_eq!(failed["status"], "accepted");

    let malformed = app.post_callback("{\"task_id\":").await;
    assert_eq!(response_json(malformed).await["error"], "invalid_json");
    let invalid = app
        .post_callback(r#"{"task_id":"m1","status":"completed","data":{"video_url":"ftp://x/y"}}"#)
        .await;
    assert_eq!(response_json(invalid).await["error"], "invalid_payload");

    app.amqp
        .queue_delete(app.failed_queue().into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    let unroutable = app.post_callback(&failed_body(&unique_task_id())).await;
    assert_eq!(unroutable.status(), 503);
    assert_eq!(
        response_json(unroutable).await["error"],
        "broker_unavailable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_each_outcome() {
    let app = spawn_app().await;
    send_every_outcome(&app).await;
    let scrape = scrape(&app).await;

    assert_eq!(
        scrape.nonzero("webhook_bridge_requests_total"),
        expected(&[
            (
                r#"webhook_bridge_requests_total{outcome="accepted",reason="none"}"#,
                2.0
            ),
            (
                r#"webhook_bridge_requests_total{outcome="duplicate",reason="none"}"#,
                1.0
            ),
            (
                r#"webhook_bridge_requests_total{outcome="rejected",reason="invalid_json"}"#,
                1.0
            ),
            (
                r#"webhook_bridge_requests_total{outcome="rejected",reason="invalid_payload"}"#,
                1.0
            ),
            (
                r#"webhook_bridge_requests_total{outcome="unavailable",reason="broker_unavailable"}"#,
                1.0
            ),
        ])
    );
    assert_eq!(
        scrape.nonzero("webhook_bridge_events_published_total"),
        expected(&[
            (
                r#"webhook_bridge_events_published_total{broker="rabbitmq",event_type="task.completed"}"#,
                1.0
            ),
            (
                r#"webhook_bridge_events_published_total{broker="rabbitmq",event_type="task.failed"}"#,
                1.0
            ),
        ])
    );
    assert_eq!(
        scrape.nonzero("webhook_bridge_publish_failures_total"),
        expected(&[(
            r#"webhook_bridge_publish_failures_total{broker="rabbitmq",reason="unroutable"}"#,
            1.0
        )])
    );
    assert_eq!(
        scrape.nonzero("webhook_bridge_dedup_errors_total"),
        BTreeMap::new()
    );
    assert_eq!(scrape.value("webhook_bridge_requests_in_flight"), 0.0);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_time_requests_and_publishes() {
    let app = spawn_app().await;
    send_every_outcome(&app).await;
    let scrape = scrape(&app).await;

    for (outcome, count) in [
        ("accepted", 2.0),
        ("duplicate", 1.0),
        ("rejected", 2.0),
        ("unavailable", 1.0),
    ] {
        let labels = format!(r#"outcome="{outcome}""#);
        let name = "webhook_bridge_request_duration_seconds";
        assert_eq!(
            scrape.value(&format!("{name}_count{{{labels}}}")),
            count,
            "{outcome}"
        );
        assert_eq!(
            scrape.value(&format!(r#"{name}_bucket{{{labels},le="+Inf"}}"#)),
            count,
            "{outcome}"
        );
        assert!(
            scrape.value(&format!("{name}_sum{{{labels}}}")) > 0.0,
            "{outcome}"
        );
    }

    // Two confirmed publishes and one that came back unroutable.
    let name = "webhook_bridge_publish_duration_seconds";
    assert_eq!(
        scrape.value(&format!(r#"{name}_count{{broker="rabbitmq"}}"#)),
        3.0
    );
    assert_eq!(
        scrape.value(&format!(r#"{name}_bucket{{broker="rabbitmq",le="10"}}"#)),
        3.0
    );
    assert!(scrape.value(&format!(r#"{name}_sum{{broker="rabbitmq"}}"#)) > 0.0);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_health_and_version() {
    let app = spawn_app().await;
    let scrape = scrape(&app).await;
    assert_eq!(
        scrape.value(r#"webhook_bridge_broker_up{broker="rabbitmq"}"#),
        1.0
    );
    assert_eq!(scrape.value("webhook_bridge_redis_up"), 1.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        scrape.value(&format!(
            r#"webhook_bridge_build_info{{version="{version}"}}"#
        )),
        1.0
    );
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_down_and_counted() {
    // A port that was free a moment ago, so nothing listens there.
    let port = free_port();
    let app = spawn_app_with(|settings| {
        settings.redis.url =
            webhook_bridge::secret::SecretUrl::new_unchecked(&format!("redis://127.0.0.1:{port}"));
    })
    .await;
    let broker_up = r#"webhook_bridge_broker_up{broker="rabbitmq"}"#;
    wait_for_value(&app, broker_up, 1.0, Duration::from_secs(10)).await;

    let response = app.post_callback(&completed_body(&unique_task_id())).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response_json(response).await["error"], "dedup_unavailable");

    let scrape = scrape(&app).await;
    assert_eq!(scrape.value("webhook_bridge_redis_up"), 0.0);
    assert_eq!(scrape.value(broker_up), 1.0);
    assert_eq!(
        scrape.nonzero("webhook_bridge_requests_total"),
        expected(&[(
            r#"webhook_bridge_requests_total{outcome="unavailable",reason="dedup_unavailable"}"#,
            1.0
        )])
    );
    assert_eq!(
        scrape.nonzero("webhook_bridge_dedup_errors_total"),
        expected(&[(
            r#"webhook_bridge_dedup_errors_total{operation="claim"}"#,
            1.0
        )])
    );
    assert_eq!(
        scrape.nonzero("webhook_bridge_events_published_total"),
        BTreeMap::new()
    );
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_request_leaves_in_flight() {
    let proxy = Proxy::start(AMQP_ADDRESS.parse().unwrap()).await;
    // A publish timeout far above the wait below, so that only the dropped request future
    // can bring the gauge back to 0 in time.
    let app = spawn_app_with(|settings| {
        settings.rabbitmq.url = amqp_through(&proxy);
        settings.broker.publish_timeout_ms = 15_000;
        settings.redis.pending_ttl_ms = 30_000;
        settings.server.shutdown_timeout_secs = 30;
    })
    .await;
    let in_flight = "webhook_bridge_requests_in_flight";

    proxy.set(Mode::Stall);
    let body = completed_body(&unique_task_id());
    let address = app.address.trim_start_matches("http://");
    let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        app.settings.server.webhook_path,
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    wait_for_value(&app, in_flight, 1.0, Duration::from_secs(5)).await;

    // The client resets the connection instead of closing it, because actix-http 3 lets the
    // request of a half-closed connection run on but drops it when the connection is reset.
    client.set_zero_linger().unwrap();
    drop(client);
    wait_for_value(&app, in_flight, 0.0, Duration::from_secs(5)).await;
    assert_eq!(
        scrape(&app).await.nonzero("webhook_bridge_requests_total"),
        BTreeMap::new(),
        "a request without a response has no outcome"
    );

    proxy.set(Mode::Forward);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_accept_get_only() {
    let app = spawn_app().await;
    for method in [reqwest::Method::HEAD, reqwest::Method::POST] {
        let response = app
            .http
            .request(method.clone(), format!("{}/metrics", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        assert_eq!(response.headers()["allow"], "GET", "{method}");
    }
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check() {
    let app = spawn_app().await;
    send_every_outcome(&app).await;
    let text = scrape(&app).await.text;
    app.teardown().await;

    let mut promtool = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(cause) => panic!(
            "promtool could not be started ({cause}); scripts/test installs it with ensure_promtool from scripts/services.sh"
        ),
    };
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_publish_is_counted() {
    let app = spawn_kafka_app(KAFKA_BROKERS, |_| {}).await;
    let response = app.post_callback(&completed_body(&unique_task_id())).await;
    assert_eq!(response_json(response).await["status"], "accepted");

    let scrape = scrape(&app).await;
    assert_eq!(
        scrape.nonzero("webhook_bridge_events_published_total"),
        expected(&[(
            r#"webhook_bridge_events_published_total{broker="kafka",event_type="task.completed"}"#,
            1.0
        )])
    );
    assert_eq!(
        scrape.value(r#"webhook_bridge_publish_duration_seconds_count{broker="kafka"}"#),
        1.0
    );
    assert_eq!(
        scrape.value(r#"webhook_bridge_broker_up{broker="kafka"}"#),
        1.0
    );
    assert!(
        !scrape.text.contains(r#"broker="rabbitmq""#),
        "a Kafka bridge reports no RabbitMQ series"
    );
    teardown_kafka(app).await;
}

/// Returns every `webhook_bridge_*` name used in a query of the Grafana dashboard.
fn dashboard_metric_names() -> BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/webhook-bridge.json"
    );
    let text = std::fs::read_to_string(path).expect("dashboard file");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    assert!(!queries.is_empty(), "the dashboard has no queries");

    let mut names = BTreeSet::new();
    for query in queries {
        for (start, _) in query.match_indices("webhook_bridge_") {
            let name: String = query[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

fn collect_queries(value: &serde_json::Value, queries: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(object) => {
            for (key, value) in object {
                match value {
                    serde_json::Value::String(query) if key == "expr" => {
                        queries.push(query.clone())
                    }
                    other => collect_queries(other, queries),
                }
            }
        }
        serde_json::Value::Array(values) => {
            for value in values {
                collect_queries(value, queries);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_use_served_metrics() {
    let app = spawn_app().await;
    let text = scrape(&app).await.text;
    app.teardown().await;

    // A histogram `name` is served as `name_bucket`, `name_sum` and `name_count`.
    let mut served = BTreeSet::new();
    for line in text.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declaration.split_once(' ').expect("TYPE line has a kind");
            served.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    served.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    let unknown: Vec<_> = dashboard_metric_names()
        .into_iter()
        .filter(|name| !served.contains(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "deploy/grafana/webhook-bridge.json queries metrics that /metrics does not serve: {unknown:?}"
    );
}
