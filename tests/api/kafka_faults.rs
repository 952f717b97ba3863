//! Kafka faults that a real broker cannot be asked for, injected with librdkafka's mock
//! cluster: a broker that goes down, produce requests that fail, a slow round trip, and a
//! fatal producer error.

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::helpers::*;
use crate::kafka_support::*;
use crate::proxy::{Mode, Proxy};

/// Starts a one-broker mock cluster with the test's two topics, and a bridge publishing to it.
async fn spawn_on_mock_cluster() -> (MockCluster<'static, DefaultProducerContext>, TestApp) {
    let id = topic_id();
    let cluster = mock_cluster(&id);
    let brokers = cluster.bootstrap_servers();
    let app = spawn_app_with(|settings| use_kafka(settings, &brokers, &id)).await;
    app.wait_ready(200, Duration::from_secs(10)).await;
    (cluster, app)
}

fn within_publish_timeout(app: &TestApp, took: Duration) -> bool {
    took < Duration::from_millis(app.settings.broker.publish_timeout_ms + 500)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_answers_503_and_the_retry_publishes() {
    let (cluster, app) = spawn_on_mock_cluster().await;
    let topic = app.settings.kafka.topic_completed.clone();
    let before = completed_body(&unique_task_id());
    assert_eq!(app.post_callback(&before).await.status(), 200);

    cluster.broker_down(1).unwrap();
    let task_id = unique_task_id();
    let body = completed_body(&task_id);
    let started = Instant::now();
    let response = app.post_callback(&body).await;
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
    assert!(within_publish_timeout(&app, took), "took {took:?}");
    assert!(
        app.redis_get(&app.dedup_key(&task_id, "completed"))
            .await
            .is_none(),
        "the claim was released"
    );
    app.wait_ready(503, Duration::from_secs(10)).await;

    cluster.broker_up(1).unwrap();
    app.wait_ready(200, Duration::from_secs(10)).await;
    let retry = app.post_callback(&body).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(response_json(retry).await["status"], "accepted");

    let messages = consume(&cluster.bootstrap_servers(), &topic, 2).await;
    let keys: Vec<_> = messages.iter().filter_map(|m| m.key.clone()).collect();
    assert!(keys.contains(&task_id), "the retry was published: {keys:?}");
    assert!(messages.len() >= 2);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_produce_errors_are_retried_within_the_request() {
    let (cluster, app) = spawn_on_mock_cluster().await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let task_id = unique_task_id();
    let response = app.post_callback(&completed_body(&task_id)).await;
    assert_eq!(response.status(), 200, "librdkafka retried the produce");

    let messages = consume(
        &cluster.bootstrap_servers(),
        &app.settings.kafka.topic_completed,
        1,
    )
    .await;
    assert_eq!(messages.len(), 1, "the idempotent producer wrote it once");
    assert_eq!(messages[0].key.as_deref(), Some(task_id.as_str()));
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_produce_error_answers_503_at_once() {
    let (cluster, app) = spawn_on_mock_cluster().await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let task_id = unique_task_id();
    let body = failed_body(&task_id);
    let started = Instant::now();
    let response = app.post_callback(&body).await;
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(
        took < Duration::from_millis(app.settings.broker.publish_timeout_ms / 2),
        "a permanent error is not waited out: {took:?}"
    );
    assert!(app.keys().await.is_empty(), "the claim was released");

    // The error was injected once; the provider's retry goes through.
    let retry = app.post_callback(&body).await;
    let status = retry.status();
    assert_eq!(status, 200, "{}", retry.text().await.unwrap());
    let messages = consume(
        &cluster.bootstrap_servers(),
        &app.settings.kafka.topic_failed,
        1,
    )
    .await;
    assert_eq!(messages.len(), 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_broker_answers_503_within_the_limit() {
    let (cluster, app) = spawn_on_mock_cluster().await;
    cluster
        .broker_round_trip_time(1, Duration::from_secs(4))
        .unwrap();
    let task_id = unique_task_id();
    let body = completed_body(&task_id);
    let started = Instant::now();
    let response = app.post_callback(&body).await;
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(within_publish_timeout(&app, took), "took {took:?}");
    assert!(app.keys().await.is_empty(), "the claim was released");
    let ready = app.get("/readyz").await;
    assert_eq!(
        ready.status(),
        503,
        "a timed-out publish marks Kafka not ready"
    );

    cluster
        .broker_round_trip_time(1, Duration::from_millis(0))
        .unwrap();
    let retry = app.post_callback(&body).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(response_json(retry).await["status"], "accepted");
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_producer_error_builds_a_new_producer() {
    let (cluster, app) = spawn_on_mock_cluster().await;
    // A sequence error on the first produce request means that the producer and the broker
    // disagree on what was written. librdkafka raises a fatal error and sends nothing more.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let task_id = unique_task_id();
    let body = completed_body(&task_id);
    assert_eq!(app.post_callback(&body).await.status(), 503);
    assert!(app.keys().await.is_empty(), "the claim was released");

    app.wait_ready(200, Duration::from_secs(10)).await;
    let retry = app.post_callback(&body).await;
    assert_eq!(retry.status(), 200, "the new producer publishes");
    let other = completed_body(&unique_task_id());
    assert_eq!(app.post_callback(&other).await.status(), 200);

    let messages = consume(
        &cluster.bootstrap_servers(),
        &app.settings.kafka.topic_completed,
        2,
    )
    .await;
    assert_eq!(messages.len(), 2);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_stop_reports_undelivered_messages() {
    let id = topic_id();
    let cluster = mock_cluster(&id);
    let settings = test_settings();
    let port = free_port();
    let mut environment =
        kafka_bridge_environment(&settings, port, &cluster.bootstrap_servers(), &id);
    environment.push((
        "WEBHOOK_BRIDGE__KAFKA__FLUSH_TIMEOUT_MS".to_owned(),
        "1000".to_owned(),
    ));
    let bridge = BridgeProcess::spawn(environment);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&http, &base).await;

    // The message waits in the producer for the broker while SIGINT cuts its request off.
    cluster.broker_down(1).unwrap();
    let request = tokio::spawn({
        let http = http.clone();
        let url = format!("{base}/webhook");
        async move {
            http.post(url)
                .header("content-type", "application/json")
                .body(completed_body(&unique_task_id()))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let output = bridge.stop_with("INT").await;
    let answer = request.await.unwrap();
    assert!(
        answer.is_err(),
        "the request cut off by the stop got no answer: {answer:?}"
    );

    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("SIGINT received"), "{log}");
    assert!(
        log.contains("Kafka producer did not deliver every message within 1s. undelivered=1"),
        "{log}"
    );
    remove_test_data(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_fatal_errors_back_off() {
    let id = topic_id();
    let cluster = mock_cluster(&id);
    let settings = test_settings();
    let port = free_port();
    let environment = kafka_bridge_environment(&settings, port, &cluster.bootstrap_servers(), &id);
    let bridge = BridgeProcess::spawn(environment);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&http, &base).await;

    // The first produce makes the producer fatal, and the broker then refuses a producer id
    // to every new producer, so each rebuild ends in another fatal error.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    cluster.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED; 50],
    );
    let response = http
        .post(format!("{base}/webhook"))
        .header("content-type", "application/json")
        .body(completed_body(&unique_task_id()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        503,
        "a producer without a producer id is not ready"
    );

    let output = bridge.stop_with("TERM").await;
    let log = String::from_utf8_lossy(&output.stderr);
    let rebuilds = log.matches("Built a new Kafka producer.").count();
    // Delays of 0.2, 0.4, 0.8 and 1.6 s fit in 4 s; a fixed 0.2 s delay would allow 20.
    assert!(rebuilds >= 2, "the producer was rebuilt: {log}");
    assert!(rebuilds <= 5, "{rebuilds} rebuilds in 4 s: {log}");
    remove_test_data(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_producer_is_replaced() {
    let id = topic_id();
    let cluster = mock_cluster(&id);
    let settings = test_settings();
    let port = free_port();
    let environment = kafka_bridge_environment(&settings, port, &cluster.bootstrap_servers(), &id);
    let bridge = BridgeProcess::spawn(environment);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&http, &base).await;

    // librdkafka reports a fenced producer to each message without raising a fatal error,
    // so the producer would keep its rejected id.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED; 3],
    );
    let post = |task_id: String| {
        http.post(format!("{base}/webhook"))
            .header("content-type", "application/json")
            .body(completed_body(&task_id))
            .send()
    };
    let first = unique_task_id();
    assert_eq!(post(first.clone()).await.unwrap().status(), 503);
    for _ in 0..2 {
        assert_eq!(post(unique_task_id()).await.unwrap().status(), 503);
    }
    wait_until_ready(&http, &base).await;
    assert_eq!(post(unique_task_id()).await.unwrap().status(), 200);

    let output = bridge.stop_with("TERM").await;
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("Kafka producer failed 3 publishes in a row; building a new producer."),
        "{log}"
    );
    assert!(log.contains("Built a new Kafka producer."), "{log}");
    // Each failure is logged with its task id, error code and whether a retry can succeed.
    assert!(
        log.contains(&format!(
            "task_id={first} event_type=task.completed retriable=true cause=publish failed: broker refused the event: ProducerFenced"
        )),
        "{log}"
    );
    remove_test_data(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_local_queue_is_waited_for_briefly() {
    let id = topic_id();
    let cluster = mock_cluster(&id);
    let brokers = cluster.bootstrap_servers();
    let app = spawn_app_with(|settings| {
        use_kafka(settings, &brokers, &id);
        // Room for one message, so that a second publish finds the local queue full.
        settings
            .kafka
            .options
            .insert("queue.buffering.max.messages", "1");
    })
    .await;
    app.wait_ready(200, Duration::from_secs(10)).await;

    // With the broker down, the first message stays in the local queue.
    cluster.broker_down(1).unwrap();
    let first_body = completed_body(&unique_task_id());
    let first = app.post_callback(&first_body);
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let response = app.post_callback(&completed_body(&unique_task_id())).await;
        (response.status(), started.elapsed())
    };
    let (first, (status, took)) = tokio::join!(first, second);
    assert_eq!(first.status(), 503);
    assert_eq!(status, 503);
    // The queue wait is a tenth of the 1.5 s publish timeout.
    assert!(
        took < Duration::from_millis(800),
        "a full queue is not waited out: {took:?}"
    );
    assert!(app.keys().await.is_empty(), "both claims were released");
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_does_not_wait_for_a_silent_broker() {
    // A broker that accepts connections and never replies keeps each metadata request
    // waiting for the whole kafka.metadata_timeout_ms.
    let proxy = Proxy::start(KAFKA_BROKERS.parse().unwrap()).await;
    proxy.set(Mode::Stall);
    let settings = test_settings();
    let port = free_port();
    let brokers = format!("127.0.0.1:{}", proxy.port());
    let mut environment = kafka_bridge_environment(&settings, port, &brokers, &topic_id());
    environment.push((
        "WEBHOOK_BRIDGE__KAFKA__METADATA_TIMEOUT_MS".to_owned(),
        "60000".to_owned(),
    ));
    let bridge = BridgeProcess::spawn(environment);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_serving(&http, &base).await;

    let stopping = Instant::now();
    let output = bridge.stop_with("TERM").await;
    let took = stopping.elapsed();
    assert!(output.status.success(), "exit status {:?}", output.status);
    // The producer flush may take kafka.flush_timeout_ms (5 s by default).
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_brokers_do_not_flood_the_log() {
    let settings = test_settings();
    let port = free_port();
    let closed = format!("127.0.0.1:{}", free_port());
    let environment = kafka_bridge_environment(&settings, port, &closed, &topic_id());
    let bridge = BridgeProcess::spawn(environment);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_serving(&http, &base).await;
    // librdkafka reports each failed reconnect, several times a second at first.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let output = bridge.stop_with("TERM").await;
    let log = String::from_utf8_lossy(&output.stderr);
    let lines = log.matches("Kafka client error.").count();
    assert!(lines >= 1, "the outage is logged: {log}");
    assert!(lines <= 3, "one line per error code: {log}");
}
