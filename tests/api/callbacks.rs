//! Accepted callbacks arrive once, on the right queue, with the right properties and the
//! callback byte for byte in `data`.

use serde_json::value::RawValue;

use crate::helpers::*;

#[derive(serde::Deserialize)]
struct CloudEvent<'a> {
    specversion: String,
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    source: String,
    subject: String,
    time: String,
    datacontenttype: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_callback_is_published() {
    let app = spawn_app_with(|settings| settings.event.source = "urn:test:bridge".to_owned()).await;
    let task_id = unique_task_id();
    // Spacing, key order, a number past 64 bits and an escape must survive unchanged.
    let body = format!(
        r#"{{"task_id": "{task_id}", "status": "completed",
            "data": {{"image_urls": ["https://cdn.example.com/o/1.png", "https://cdn.example.com/o/2.png"],
                      "seed": 123456789012345678901234567890, "ratio": 1.50, "note": "caf\u00e9"}},
            "zz_first": true}}"#
    );

    let response = app.post_callback(&body).await;
    assert_eq!(response.status(), 200);
    let answer = response_json(response).await;
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["event_id"], format!("{task_id}:completed"));

    let messages = app.drain(app.completed_queue()).await;
    assert_eq!(messages.len(), 1, "one event per accepted callback");
    let message = &messages[0];
    assert_eq!(message.routing_key, "task.completed");

    let properties = &message.properties;
    assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        properties
            .content_type()
            .as_ref()
            .map(|value| value.as_str()),
        Some("application/cloudevents+json; charset=utf-8")
    );
    let event_id = format!("{task_id}:completed");
    assert_eq!(
        properties.message_id().as_ref().map(|value| value.as_str()),
        Some(event_id.as_str())
    );
    assert_eq!(
        properties.kind().as_ref().map(|value| value.as_str()),
        Some("task.completed")
    );
    assert_eq!(
        properties.app_id().as_ref().map(|value| value.as_str()),
        Some("webhook-bridge")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let timestamp = properties.timestamp().expect("timestamp is set");
    assert!(
        now.abs_diff(timestamp) < 60,
        "timestamp {timestamp} is near {now}"
    );

    let event: CloudEvent<'_> = serde_json::from_slice(&message.body).unwrap();
    assert_eq!(event.specversion, "1.0");
    assert_eq!(event.id, event_id);
    assert_eq!(event.event_type, "task.completed");
    assert_eq!(event.source, "urn:test:bridge");
    assert_eq!(event.subject, task_id);
    assert_eq!(event.datacontenttype, "application/json");
    assert!(
        humantime::parse_rfc3339(&event.time).is_ok(),
        "{}",
        event.time
    );
    assert_eq!(event.data.get(), body, "data is the callback byte for byte");

    assert!(app.drain(app.failed_queue()).await.is_empty());
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_callback_goes_to_failed_queue() {
    let app = spawn_app().await;
    let task_id = unique_task_id();
    let body = failed_body(&task_id);

    let response = app.post_callback(&body).await;
    assert_eq!(response.status(), 200);

    let messages = app.drain(app.failed_queue()).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].routing_key, "task.failed");
    let event = messages[0].json();
    assert_eq!(event["type"], "task.failed");
    assert_eq!(event["id"], format!("{task_id}:failed"));
    assert_eq!(event["data"]["error_message"], "Content policy violation");
    assert!(app.drain(app.completed_queue()).await.is_empty());
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_with_charset_is_accepted() {
    let app = spawn_app().await;
    let body = completed_body(&unique_task_id());
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
    ] {
        let task_id = unique_task_id();
        let body = body.replace("\"task_id\":\"", &format!("\"task_id\":\"{task_id}"));
        let response = app.post_raw(body.into_bytes(), Some(content_type)).await;
        assert_eq!(response.status(), 200, "{content_type}");
    }
    assert_eq!(app.drain(app.completed_queue()).await.len(), 2);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dedup_key_has_ttl() {
    let app = spawn_app().await;
    for _ in 0..3 {
        let task_id = unique_task_id();
        assert_eq!(
            app.post_callback(&completed_body(&task_id)).await.status(),
            200
        );
        assert_eq!(
            app.post_callback(&failed_body(&task_id)).await.status(),
            200
        );
    }

    let keys = app.keys().await;
    assert_eq!(keys.len(), 6, "one key per task and status");
    let window_ms = app.settings.redis.dedup_ttl_secs as i64 * 1000;
    for key in &keys {
        assert_eq!(app.redis_get(key).await.as_deref(), Some("done"), "{key}");
        let ttl = app.pttl(key).await;
        assert!(
            ttl > window_ms - 60_000 && ttl <= window_ms,
            "{key} has TTL {ttl}"
        );
    }
    assert_eq!(app.drain_all().await, 6);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body = response_json(ready).await;
    assert_eq!(body["redis"], "up");
    assert_eq!(body["broker"], "up");
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_task_ids_are_published() {
    let app = spawn_app().await;
    let suffix = &unique_task_id()[..8];
    // 256 characters: 256 bytes in ASCII, 512 bytes in two-byte characters. Both make event
    // ids longer than an AMQP short string (255 bytes).
    let ascii = format!("{suffix}{}", "b".repeat(248));
    let accented = format!("{suffix}{}", "é".repeat(248));
    for task_id in [&ascii, &accented] {
        assert_eq!(task_id.chars().count(), 256);
        let response = app.post_callback(&completed_body(task_id)).await;
        assert_eq!(response.status(), 200, "{} bytes", task_id.len());
        assert_eq!(response_json(response).await["status"], "accepted");
    }

    let messages = app.drain(app.completed_queue()).await;
    assert_eq!(messages.len(), 2);
    for (message, task_id) in messages.iter().zip([&ascii, &accented]) {
        assert_eq!(
            message.properties.message_id(),
            &None,
            "too long for message_id"
        );
        let event = message.json();
        assert_eq!(event["id"], format!("{task_id}:completed"));
        assert_eq!(event["subject"], task_id.as_str());
    }
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_id_fits_up_to_255_bytes() {
    let app = spawn_app().await;
    // "<task_id>:failed" is exactly 255 bytes.
    let task_id = format!("{}{}", &unique_task_id()[..8], "f".repeat(255 - 7 - 8));
    assert_eq!(
        app.post_callback(&failed_body(&task_id)).await.status(),
        200
    );
    let messages = app.drain(app.failed_queue()).await;
    assert_eq!(messages.len(), 1);
    let event_id = format!("{task_id}:failed");
    assert_eq!(event_id.len(), 255);
    assert_eq!(
        messages[0]
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some(event_id.as_str())
    );
    app.teardown().await;
}
