//! Slow and numerous clients cannot hold the bridge: a slow request head is cut off, the
//! connection cap makes new clients wait only until a connection closes, and callbacks
//! beyond `server.max_in_flight` get 503 `overloaded` at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::proxy::{Mode, Proxy};

/// Returns the value of one series on `/metrics`, such as `name{label="value"}`.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} is missing from /metrics:\n{text}"))
        .parse()
        .unwrap()
}

async fn connect(app: &TestApp) -> TcpStream {
    let address = app.address.trim_start_matches("http://");
    TcpStream::connect(address)
        .await
        .expect("connect to the bridge")
}

/// Sends `head` one byte per second on `stream` and returns what the server sent until it
/// closed the connection, with the time that took and the number of bytes sent.
async fn trickle_head(stream: TcpStream, head: String) -> (Vec<u8>, Duration, usize) {
    let (mut reader, mut writer) = stream.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in head.bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let mut received = Vec::new();
    let mut buffer = [0; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        // A reset after the server closed also ends the connection.
        while let Ok(count @ 1..) = reader.read(&mut buffer).await {
            received.extend_from_slice(&buffer[..count]);
        }
    })
    .await;
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(closed.is_ok(), "the server kept the slow connection open");
    (received, elapsed, sent.load(Ordering::SeqCst))
}

fn callback_head(app: &TestApp) -> String {
    format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n",
        app.settings.server.webhook_path
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_is_cut_off() {
    let app = spawn_app_with(|settings| settings.server.client_request_timeout_ms = 1_500).await;
    let head = callback_head(&app);

    let (received, elapsed, sent) = trickle_head(connect(&app).await, head.clone()).await;
    let response = String::from_utf8_lossy(&received);
    assert!(response.starts_with("HTTP/1.1 408"), "{response:?}");
    assert!(elapsed >= Duration::from_millis(1_400), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    assert!(
        sent < head.len(),
        "cut off after {sent} of {} bytes",
        head.len()
    );
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_closes_after_one_response() {
    // actix-web times only the first request head of a connection, so without keep-alive
    // every head is timed.
    let app = spawn_app().await;
    assert_eq!(app.settings.server.keep_alive_ms, 0);
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();

    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received));
    read.await
        .expect("the server closes the connection")
        .expect("read until the server closes");
    let response = String::from_utf8_lossy(&received).to_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response:?}");
    assert!(response.contains("connection: close"), "{response:?}");
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_holds_new_clients_until_one_closes() {
    let app = spawn_app_with(|settings| {
        settings.server.workers = 1;
        settings.server.max_connections = 3;
        settings.server.client_request_timeout_ms = 60_000;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect(&app).await);
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = format!("{}/healthz", app.address);
    let waiting = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !waiting.is_finished(),
        "a fourth connection was served while three were open"
    );

    drop(idle);
    let started = Instant::now();
    let response = waiting
        .await
        .unwrap()
        .expect("served once the idle connections closed");
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_in_flight_cap_get_503() {
    let proxy = Proxy::start(AMQP_ADDRESS.parse().unwrap()).await;
    let app = spawn_app_with(|settings| {
        settings.rabbitmq.url = amqp_through(&proxy);
        settings.server.max_in_flight = 3;
        settings.broker.publish_timeout_ms = 15_000;
        settings.redis.pending_ttl_ms = 30_000;
        settings.server.shutdown_timeout_secs = 30;
    })
    .await;
    app.wait_ready(200, Duration::from_secs(5)).await;

    // Three publishes wait on the stalled broker connection, holding every permit.
    proxy.set(Mode::Stall);
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let http = app.http.clone();
        let url = app.webhook_url();
        let body = completed_body(&unique_task_id());
        stalled.push(tokio::spawn(async move {
            http.post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
        }));
    }
    let started = Instant::now();
    while metric(&app, "webhook_bridge_requests_in_flight").await < 3.0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "requests never in flight"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let extra_id = unique_task_id();
    let started = Instant::now();
    let response = app.post_callback(&completed_body(&extra_id)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
    let answer = response_json(response).await;
    assert_eq!(answer["status"], "unavailable");
    assert_eq!(answer["error"], "overloaded");
    assert!(answer.get("field").is_none(), "{answer}");
    assert_eq!(
        metric(
            &app,
            r#"webhook_bridge_requests_total{outcome="unavailable",reason="overloaded"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        app.redis_get(&app.dedup_key(&extra_id, "completed")).await,
        None
    );
    assert!(stalled.iter().all(|request| !request.is_finished()));

    proxy.set(Mode::Forward);
    for request in stalled {
        let response = request.await.unwrap().expect("stalled request completes");
        assert_eq!(response.status(), 200);
        assert_eq!(response_json(response).await["status"], "accepted");
    }
    assert_eq!(app.drain(app.completed_queue()).await.len(), 3);

    // The permits came back.
    let response = app.post_callback(&completed_body(&extra_id)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);
    app.teardown().await;
}
