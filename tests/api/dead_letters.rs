//! Dead letters: an authenticated callback rejected with 400 or 422 arrives, with the reason
//! and the body, in the dead-letter queue or topic, while the client still gets its 4xx and
//! nothing reaches Redis or the event queues.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use serde_json::Value;
use webhook_bridge::secret::Secret;

use crate::helpers::*;
use crate::kafka_support::{
    KAFKA_BROKERS, consume, create_topics, spawn_kafka_app, teardown_kafka,
};

const TOKEN: &str = "tok-0123456789abcdef0123456789abcdef";

/// How long a test waits for a dead letter that should not come, after the 4xx.
const QUIET: Duration = Duration::from_millis(1_500);

/// Takes messages from `queue` until `expected` arrived, for at most 10 seconds, then waits
/// for [`QUIET`] so that one too many shows up.
async fn wait_for_messages(app: &TestApp, queue: &str, expected: usize) -> Vec<Received> {
    let started = Instant::now();
    let mut received = Vec::new();
    while received.len() < expected && started.elapsed() < Duration::from_secs(10) {
        received.extend(app.drain(queue).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(QUIET).await;
    received.extend(app.drain(queue).await);
    received
}

/// Returns the value of the `webhook_bridge_dead_letters_total` series with `labels`.
async fn dead_letter_count(app: &TestApp, labels: &str) -> String {
    let text = app.get("/metrics").await.text().await.unwrap();
    let series = format!("webhook_bridge_dead_letters_total{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("{series} is missing from /metrics:\n{text}"))
        .to_owned()
}

/// Checks that the bridge left nothing in Redis or in the event queues.
async fn assert_no_event(app: &TestApp) {
    assert_eq!(app.keys().await, Vec::<String>::new(), "Redis keys");
    assert_eq!(app.drain_all().await, 0, "messages in the event queues");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_payload_is_dead_lettered() {
    let app = spawn_app().await;
    let task_id = unique_task_id();
    let body = format!(r#"{{"task_id":"{task_id}","status":"done"}}"#);

    let response = app.post_callback(&body).await;
    assert_eq!(response.status(), 422);
    assert_eq!(response_json(response).await["error"], "invalid_payload");

    let received = wait_for_messages(&app, app.invalid_queue(), 1).await;
    assert_eq!(received.len(), 1, "dead letters");
    let message = &received[0];
    assert_eq!(message.routing_key, "task.invalid");
    assert_eq!(
        message.properties.kind().as_ref().map(|kind| kind.as_str()),
        Some("task.invalid")
    );
    let document = message.json();
    assert_eq!(document["specversion"], "1.0");
    assert_eq!(document["type"], "task.invalid");
    assert_eq!(document["source"], "webhook-bridge");
    assert_eq!(document["subject"], task_id.as_str());
    let data = &document["data"];
    assert_eq!(data["reason"]["status"], 422);
    assert_eq!(data["reason"]["error"], "invalid_payload");
    assert_eq!(data["reason"]["field"], "status");
    assert!(
        data["reason"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(data["body"], body.as_str());
    assert_eq!(data["content_type"], "application/json");
    assert!(data["received_at"].is_string());

    assert_no_event(&app).await;
    assert_eq!(
        dead_letter_count(&app, r#"broker="rabbitmq",result="published""#).await,
        "1"
    );
    assert_eq!(
        dead_letter_count(&app, r#"broker="rabbitmq",result="failed""#).await,
        "0"
    );
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_is_dead_lettered() {
    let app = spawn_app().await;
    let body = r#"{"task_id":"abc","status":"#;

    let response = app.post_callback(body).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response_json(response).await["error"], "invalid_json");

    let received = wait_for_messages(&app, app.invalid_queue(), 1).await;
    assert_eq!(received.len(), 1, "dead letters");
    let document = received[0].json();
    let data = &document["data"];
    assert_eq!(data["reason"]["status"], 400);
    assert_eq!(data["reason"]["error"], "invalid_json");
    assert_eq!(data["body"], body);
    assert!(document.get("subject").is_none(), "{document}");

    assert_no_event(&app).await;
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_that_is_not_utf8_arrives_as_base64() {
    let app = spawn_app().await;
    let body = b"{\"task_id\":\"caf\xe9\",\"status\":\"completed\"}".to_vec();

    let response = app
        .post_raw(body.clone(), Some("application/json; charset=utf-8"))
        .await;
    assert_eq!(response.status(), 400);

    let received = wait_for_messages(&app, app.invalid_queue(), 1).await;
    assert_eq!(received.len(), 1, "dead letters");
    let data = &received[0].json()["data"];
    assert!(data.get("body").is_none(), "{data}");
    assert_eq!(data["body_base64"], BASE64.encode(&body));
    assert_eq!(data["content_type"], "application/json; charset=utf-8");

    assert_no_event(&app).await;
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_turned_off() {
    let app = spawn_app_with(|settings| settings.dead_letter.enabled = false).await;
    // The bridge does not declare the queue when dead letters are off, so the test binds
    // one itself to see whatever would be published.
    let queue = app.invalid_queue().to_owned();
    app.declare_queue(&queue).await;
    app.amqp
        .queue_bind(
            queue.as_str().into(),
            app.settings.rabbitmq.exchange.as_str().into(),
            "task.invalid".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");

    let response = app
        .post_callback(r#"{"task_id":"abc","status":"done"}"#)
        .await;
    assert_eq!(response.status(), 422);
    let response = app.post_callback("{").await;
    assert_eq!(response.status(), 400);

    assert_eq!(wait_for_messages(&app, &queue, 0).await.len(), 0);
    assert_eq!(
        dead_letter_count(&app, r#"broker="rabbitmq",result="published""#).await,
        "0"
    );
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_request_is_not_dead_lettered() {
    let app = spawn_app_with(|settings| settings.auth.tokens = vec![Secret::new(TOKEN)]).await;
    let body = r#"{"task_id":"abc","status":"done"}"#;

    let missing = app.post_callback(body).await;
    assert_eq!(missing.status(), 401);
    let wrong = app
        .http
        .post(app.webhook_url())
        .bearer_auth("tok-00000000000000000000000000000000")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // The same body with the token is kept, so the queue is in place and the two 401s left
    // nothing in it.
    let admitted = app
        .http
        .post(format!("{}/{TOKEN}", app.webhook_url()))
        .header("content-type", "application/json")
        .body(r#"{"task_id":"admitted","status":"done"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(admitted.status(), 422);

    let received = wait_for_messages(&app, app.invalid_queue(), 1).await;
    assert_eq!(received.len(), 1, "dead letters");
    let document: Value = received[0].json();
    assert_eq!(document["subject"], "admitted");
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_payload_is_dead_lettered_on_kafka() {
    let app = spawn_kafka_app(KAFKA_BROKERS, |_| {}).await;
    let topic = app.settings.kafka.topic_invalid.clone();
    create_topics(KAFKA_BROKERS, std::slice::from_ref(&topic)).await;
    let task_id = unique_task_id();
    let body = format!(r#"{{"task_id":"{task_id}","status":"done"}}"#);

    let response = app.post_callback(&body).await;
    assert_eq!(response.status(), 422);

    let messages = consume(KAFKA_BROKERS, &topic, 1).await;
    assert_eq!(messages.len(), 1, "dead letters");
    let message = &messages[0];
    assert_eq!(message.key.as_deref(), Some(task_id.as_str()));
    assert_eq!(message.headers["ce_type"], "task.invalid");
    assert_eq!(message.headers["ce_subject"], task_id);
    let document: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(document["type"], "task.invalid");
    assert_eq!(document["data"]["reason"]["status"], 422);
    assert_eq!(document["data"]["reason"]["error"], "invalid_payload");
    assert_eq!(document["data"]["body"], body.as_str());
    assert_eq!(app.keys().await, Vec::<String>::new(), "Redis keys");
    for event_topic in [
        &app.settings.kafka.topic_completed,
        &app.settings.kafka.topic_failed,
    ] {
        assert_eq!(consume(KAFKA_BROKERS, event_topic, 0).await.len(), 0);
    }
    teardown_kafka(app).await;
}
