//! When Redis or RabbitMQ fails, is down or hangs, the response is 503 with Retry-After, the
//! dedup claim is gone, and the provider's retry publishes the event once.

use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeleteOptions, QueueBindOptions};
use lapin::types::FieldTable;

use crate::helpers::*;
use crate::proxy::{Mode, Proxy};

/// Posts `body` until it is accepted, for at most `limit`. Every other response must be 503.
async fn retry_until_accepted(app: &TestApp, body: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let response = app.post_callback(body).await;
        match response.status().as_u16() {
            200 => {
                assert_eq!(response_json(response).await["status"], "accepted");
                return;
            }
            503 => assert!(
                started.elapsed() < limit,
                "still 503 after {limit:?} of retries"
            ),
            other => panic!("unexpected status {other} while retrying"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assert_unavailable(response: reqwest::Response, error: &str) {
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
    let answer = response_json(response).await;
    assert_eq!(answer["status"], "unavailable");
    assert_eq!(answer["error"], error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_event_is_503_then_retry_publishes() {
    let app = spawn_app_with(|settings| settings.rabbitmq.declare_queues = false).await;
    let task_id = unique_task_id();
    let body = completed_body(&task_id);

    assert_unavailable(app.post_callback(&body).await, "broker_unavailable").await;
    assert_eq!(
        app.pttl(&app.dedup_key(&task_id, "completed")).await,
        -2,
        "claim released"
    );

    app.declare_queue(app.completed_queue()).await;
    app.amqp
        .queue_bind(
            app.completed_queue().into(),
            app.settings.rabbitmq.exchange.as_str().into(),
            "task.completed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    retry_until_accepted(&app, &body, Duration::from_secs(5)).await;
    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_exchange_is_503_then_recovers() {
    let app = spawn_app().await;
    assert_eq!(
        app.post_callback(&completed_body(&unique_task_id()))
            .await
            .status(),
        200
    );
    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);

    app.amqp
        .exchange_delete(
            app.settings.rabbitmq.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    let task_id = unique_task_id();
    let body = completed_body(&task_id);
    assert_unavailable(app.post_callback(&body).await, "broker_unavailable").await;
    assert_eq!(
        app.pttl(&app.dedup_key(&task_id, "completed")).await,
        -2,
        "claim released"
    );

    // The bridge reopens its channel and declares the exchange and bindings again.
    retry_until_accepted(&app, &body, Duration::from_secs(10)).await;
    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_is_fast_503_then_recovers() {
    let proxy = Proxy::start(AMQP_ADDRESS.parse().unwrap()).await;
    let app = spawn_app_with(|settings| {
        settings.rabbitmq.url = amqp_through(&proxy);
    })
    .await;
    assert_eq!(
        app.post_callback(&completed_body(&unique_task_id()))
            .await
            .status(),
        200
    );

    proxy.set(Mode::Refuse);
    app.wait_ready(503, Duration::from_secs(5)).await;
    let task_id = unique_task_id();
    let body = completed_body(&task_id);
    let started = Instant::now();
    assert_unavailable(app.post_callback(&body).await, "broker_unavailable").await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "503 is fast while the broker is down, took {:?}",
        started.elapsed()
    );
    assert_eq!(
        app.pttl(&app.dedup_key(&task_id, "completed")).await,
        -2,
        "claim released"
    );

    proxy.set(Mode::Forward);
    app.wait_ready(200, Duration::from_secs(10)).await;
    retry_until_accepted(&app, &body, Duration::from_secs(5)).await;
    assert_eq!(app.drain(app.completed_queue()).await.len(), 2);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_broker_times_out_and_releases() {
    let proxy = Proxy::start(AMQP_ADDRESS.parse().unwrap()).await;
    let app = spawn_app_with(|settings| {
        settings.rabbitmq.url = amqp_through(&proxy);
    })
    .await;

    proxy.set(Mode::Stall);
    let task_id = unique_task_id();
    let body = failed_body(&task_id);
    let started = Instant::now();
    assert_unavailable(app.post_callback(&body).await, "broker_unavailable").await;
    let elapsed = started.elapsed();
    let timeout = Duration::from_millis(app.settings.broker.publish_timeout_ms);
    assert!(elapsed >= timeout, "waited for the confirm: {elapsed:?}");
    assert!(elapsed < timeout * 2, "the wait is bounded: {elapsed:?}");
    assert_eq!(
        app.pttl(&app.dedup_key(&task_id, "failed")).await,
        -2,
        "claim released"
    );
    let ready = app.get("/readyz").await;
    assert_eq!(
        ready.status(),
        503,
        "a broker that stopped confirming is not ready"
    );
    assert_eq!(response_json(ready).await["broker"], "down");

    // Drop the stalled connection with its unsent frames, as a broker failover would.
    proxy.set(Mode::Refuse);
    app.wait_ready(503, Duration::from_secs(5)).await;
    proxy.set(Mode::Forward);
    retry_until_accepted(&app, &body, Duration::from_secs(10)).await;
    assert_eq!(app.drain(app.failed_queue()).await.len(), 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_503_then_recovers() {
    let proxy = Proxy::start(REDIS_ADDRESS.parse().unwrap()).await;
    let app = spawn_app_with(|settings| settings.redis.url = redis_through(&proxy)).await;
    assert_eq!(
        app.post_callback(&completed_body(&unique_task_id()))
            .await
            .status(),
        200
    );

    proxy.set(Mode::Refuse);
    let body = completed_body(&unique_task_id());
    assert_unavailable(app.post_callback(&body).await, "dedup_unavailable").await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert_eq!(response_json(ready).await["redis"], "down");
    assert_eq!(
        app.drain(app.completed_queue()).await.len(),
        1,
        "nothing published while down"
    );

    proxy.set(Mode::Forward);
    retry_until_accepted(&app, &body, Duration::from_secs(10)).await;
    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_is_bounded_503() {
    let proxy = Proxy::start(REDIS_ADDRESS.parse().unwrap()).await;
    let app = spawn_app_with(|settings| settings.redis.url = redis_through(&proxy)).await;
    assert_eq!(
        app.post_callback(&completed_body(&unique_task_id()))
            .await
            .status(),
        200
    );

    proxy.set(Mode::Stall);
    let started = Instant::now();
    let body = completed_body(&unique_task_id());
    assert_unavailable(app.post_callback(&body).await, "dedup_unavailable").await;
    let limit = Duration::from_millis(app.settings.redis.response_timeout_ms) * 3;
    assert!(started.elapsed() < limit, "took {:?}", started.elapsed());

    // Cut the stalled connection so that its unsent commands never reach Redis.
    proxy.set(Mode::Refuse);
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set(Mode::Forward);
    retry_until_accepted(&app, &body, Duration::from_secs(10)).await;
    assert_eq!(app.drain(app.completed_queue()).await.len(), 2);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_can_publish_without_dedup() {
    let proxy = Proxy::start(REDIS_ADDRESS.parse().unwrap()).await;
    let app = spawn_app_with(|settings| {
        settings.redis.url = redis_through(&proxy);
        settings.redis.on_unavailable = webhook_bridge::config::OnRedisUnavailable::Publish;
    })
    .await;

    proxy.set(Mode::Refuse);
    let response = app.post_callback(&failed_body(&unique_task_id())).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response_json(response).await["status"], "accepted");
    assert_eq!(app.drain(app.failed_queue()).await.len(), 1);

    // Callbacks still go through, so the replica stays in the load balancer's rotation.
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let ready = response_json(ready).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["redis"], "down");
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_exchange_is_503_until_created() {
    let app = spawn_app_with(|settings| {
        settings.rabbitmq.declare_exchange = false;
        settings.rabbitmq.declare_queues = false;
    })
    .await;
    let task_id = unique_task_id();
    let body = completed_body(&task_id);

    assert_unavailable(app.post_callback(&body).await, "broker_unavailable").await;
    assert_eq!(
        app.pttl(&app.dedup_key(&task_id, "completed")).await,
        -2,
        "claim released"
    );

    // The operator creates the topology; the bridge itself declares nothing.
    let exchange = app.settings.rabbitmq.exchange.as_str();
    app.amqp
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    app.declare_queue(app.completed_queue()).await;
    app.amqp
        .queue_bind(
            app.completed_queue().into(),
            exchange.into(),
            "task.completed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    retry_until_accepted(&app, &body, Duration::from_secs(10)).await;
    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_broker_is_found_by_heartbeat() {
    let proxy = Proxy::start(AMQP_ADDRESS.parse().unwrap()).await;
    let app = spawn_app_with(|settings| {
        settings.rabbitmq.url = amqp_through(&proxy);
        settings.rabbitmq.heartbeat_secs = 1;
    })
    .await;
    app.wait_ready(200, Duration::from_secs(5)).await;

    // No request is sent: only the missing heartbeats reveal the silent broker.
    proxy.set(Mode::Stall);
    app.wait_ready(503, Duration::from_secs(8)).await;

    proxy.set(Mode::Forward);
    app.wait_ready(200, Duration::from_secs(10)).await;
    let response = app.post_callback(&completed_body(&unique_task_id())).await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unroutable_events_stay_apart() {
    let app = spawn_app_with(|settings| {
        settings.server.workers = 2;
        settings.rabbitmq.declare_queues = false;
    })
    .await;
    // Only task.completed has a queue, so every failed event comes back unroutable.
    app.declare_queue(app.completed_queue()).await;
    app.amqp
        .queue_bind(
            app.completed_queue().into(),
            app.settings.rabbitmq.exchange.as_str().into(),
            "task.completed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let mut completed_ids = Vec::new();
    for _ in 0..5 {
        let mut bodies = Vec::new();
        for _ in 0..20 {
            let task_id = unique_task_id();
            bodies.push((true, completed_body(&task_id)));
            bodies.push((false, failed_body(&task_id)));
            completed_ids.push(task_id);
        }
        let app = &app;
        let requests = bodies.iter().map(|(completed, body)| async move {
            (*completed, app.post_callback(body).await.status().as_u16())
        });
        for (completed, status) in futures_util::future::join_all(requests).await {
            if completed {
                assert_eq!(status, 200, "a routable event is accepted");
            } else {
                assert_eq!(status, 503, "an unroutable event is never accepted");
            }
        }
    }

    let messages = app.drain(app.completed_queue()).await;
    assert_eq!(
        messages.len(),
        completed_ids.len(),
        "each completed event once"
    );
    for task_id in &completed_ids {
        assert_eq!(
            app.pttl(&app.dedup_key(task_id, "failed")).await,
            -2,
            "no claim left for an unroutable event"
        );
    }
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_redis_reply_leaves_no_claim() {
    let proxy = Proxy::start(REDIS_ADDRESS.parse().unwrap()).await;
    let app = spawn_app_with(|settings| settings.redis.url = redis_through(&proxy)).await;
    assert_eq!(app.get("/readyz").await.status(), 200);

    // The SET reaches Redis only after the bridge gave up waiting for its reply.
    proxy.set(Mode::Stall);
    let task_id = unique_task_id();
    let body = completed_body(&task_id);
    assert_unavailable(app.post_callback(&body).await, "dedup_unavailable").await;
    proxy.set(Mode::Forward);
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(
        app.pttl(&app.dedup_key(&task_id, "completed")).await,
        -2,
        "the late claim was released"
    );
    let retry = app.post_callback(&body).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(response_json(retry).await["status"], "accepted");
    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_returns_after_short_stall() {
    let proxy = Proxy::start(AMQP_ADDRESS.parse().unwrap()).await;
    let app = spawn_app_with(|settings| settings.rabbitmq.url = amqp_through(&proxy)).await;

    proxy.set(Mode::Stall);
    let body = completed_body(&unique_task_id());
    assert_unavailable(app.post_callback(&body).await, "broker_unavailable").await;
    proxy.set(Mode::Forward);
    assert_eq!(
        app.get("/readyz").await.status(),
        503,
        "not ready right after the stall"
    );

    // No request arrives to clear the stall: readiness must come back by itself.
    app.wait_ready(200, Duration::from_secs(10)).await;
    let response = app.post_callback(&completed_body(&unique_task_id())).await;
    assert_eq!(response.status(), 200);
    // The stalled publish reached the broker late: the README's first duplicate case.
    assert_eq!(app.drain(app.completed_queue()).await.len(), 2);
    app.teardown().await;
}
