//! The bridge against a real Kafka-protocol broker (tansu on 127.0.0.1:9092, started by
//! `scripts/test`). Each test has its own topics, and checks results by consuming them.

use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use crate::helpers::*;
use crate::kafka_support::*;

#[derive(serde::Deserialize)]
struct Document<'a> {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    source: String,
    subject: String,
    time: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_their_topics_with_key_and_headers() {
    let app = spawn_kafka_app(KAFKA_BROKERS, |settings| {
        settings.event.source = "urn:test:video-provider".to_owned();
    })
    .await;
    let task_id = unique_task_id();
    // Extra fields, a number beyond 64 bits and an escape must all arrive as sent.
    let completed = format!(
        r#"{{"task_id":"{task_id}","status":"completed","data":{{"image_urls":["https://cdn.example.com/1.png"],"seed":123456789012345678901234567890,"note":"caf\u00e9"}}}}"#
    );
    let failed_id = unique_task_id();
    let failed = failed_body(&failed_id);

    let response = app.post_callback(&completed).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response_json(response).await["status"], "accepted");
    assert_eq!(app.post_callback(&failed).await.status(), 200);

    let settings = &app.settings;
    let messages = consume(KAFKA_BROKERS, &settings.kafka.topic_completed, 1).await;
    assert_eq!(messages.len(), 1, "one message per accepted event");
    let message = &messages[0];
    assert_eq!(message.key.as_deref(), Some(task_id.as_str()));
    let document: Document<'_> = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(
        document.data.get(),
        completed,
        "data is the callback byte for byte"
    );
    assert_eq!(document.id, format!("{task_id}:completed"));
    assert_eq!(document.event_type, "task.completed");
    assert_eq!(document.source, "urn:test:video-provider");
    assert_eq!(document.subject, task_id);

    let headers = &message.headers;
    assert_eq!(headers["ce_specversion"], "1.0");
    assert_eq!(headers["ce_id"], document.id);
    assert_eq!(headers["ce_type"], "task.completed");
    assert_eq!(headers["ce_source"], "urn:test:video-provider");
    assert_eq!(headers["ce_subject"], task_id);
    assert_eq!(headers["ce_time"], document.time);
    assert_eq!(
        headers["content-type"],
        "application/cloudevents+json; charset=utf-8"
    );
    let time = humantime::parse_rfc3339(&document.time).unwrap();
    let millis = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(
        message.timestamp,
        Some(millis),
        "timestamp is the receipt time"
    );

    let messages = consume(KAFKA_BROKERS, &settings.kafka.topic_failed, 1).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].key.as_deref(), Some(failed_id.as_str()));
    assert_eq!(messages[0].headers["ce_type"], "task.failed");
    let document: Document<'_> = serde_json::from_slice(&messages[0].payload).unwrap();
    assert_eq!(document.data.get(), failed);
    teardown_kafka(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_published_once() {
    let app = spawn_kafka_app(KAFKA_BROKERS, |settings| settings.server.workers = 2).await;
    let repeated = completed_body(&unique_task_id());
    for attempt in 0..3 {
        let response = app.post_callback(&repeated).await;
        assert_eq!(response.status(), 200);
        let expected = if attempt == 0 {
            "accepted"
        } else {
            "duplicate"
        };
        assert_eq!(response_json(response).await["status"], expected);
    }

    let burst = completed_body(&unique_task_id());
    let responses =
        futures_util::future::join_all((0..20).map(|_| app.post_callback(&burst))).await;
    let mut accepted = 0;
    for response in responses {
        assert_eq!(response.status(), 200);
        if response_json(response).await["status"] == "accepted" {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1, "one of the concurrent deliveries publishes");

    let messages = consume(KAFKA_BROKERS, &app.settings.kafka.topic_completed, 2).await;
    assert_eq!(messages.len(), 2, "one message per task");
    teardown_kafka(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topic_answers_503_until_it_exists() {
    let id = topic_id();
    let [completed_topic, failed_topic] = topics_of(&id);
    create_topics(KAFKA_BROKERS, std::slice::from_ref(&completed_topic)).await;
    let app = spawn_app_with(|settings| use_kafka(settings, KAFKA_BROKERS, &id)).await;

    let ready = app.get("/readyz").await;
    assert_eq!(
        ready.status(),
        503,
        "a missing topic keeps the bridge not ready"
    );
    assert_eq!(response_json(ready).await["broker"], "down");

    let task_id = unique_task_id();
    let body = failed_body(&task_id);
    let started = Instant::now();
    let response = app.post_callback(&body).await;
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
    assert!(
        took < Duration::from_millis(app.settings.broker.publish_timeout_ms / 2),
        "answered at once, not after waiting for the topic: {took:?}"
    );
    assert!(app.keys().await.is_empty(), "the claim was released");

    create_topics(KAFKA_BROKERS, std::slice::from_ref(&failed_topic)).await;
    app.wait_ready(200, Duration::from_secs(10)).await;
    let retry = app.post_callback(&body).await;
    assert_eq!(retry.status(), 200);
    let messages = consume(KAFKA_BROKERS, &failed_topic, 1).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].key.as_deref(), Some(task_id.as_str()));
    teardown_kafka(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_at_startup_when_asked() {
    let id = topic_id();
    let app = spawn_app_with(|settings| {
        use_kafka(settings, KAFKA_BROKERS, &id);
        settings.kafka.create_topics = true;
        settings.kafka.topic_partitions = 2;
    })
    .await;
    app.wait_ready(200, Duration::from_secs(10)).await;

    let task_id = unique_task_id();
    assert_eq!(
        app.post_callback(&completed_body(&task_id)).await.status(),
        200
    );
    let messages = consume(KAFKA_BROKERS, &app.settings.kafka.topic_completed, 1).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].key.as_deref(), Some(task_id.as_str()));
    for topic in topics(&app.settings) {
        assert_eq!(partition_count(KAFKA_BROKERS, &topic).await, 2, "{topic}");
    }
    teardown_kafka(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_logs_name_missing_topics_and_unreachable_brokers() {
    let missing = topic_id();
    let closed = free_port().to_string();
    for (brokers, expected) in [
        (
            KAFKA_BROKERS,
            format!(
                "Kafka topics do not exist; their events get 503 until the topics are created (or kafka.create_topics is set). brokers={KAFKA_BROKERS} topics=test.{missing}.completed,test.{missing}.failed"
            ),
        ),
        (
            &format!("127.0.0.1:{closed}")[..],
            format!(
                "Kafka brokers are not reachable; answering 503 until they are. brokers=127.0.0.1:{closed}"
            ),
        ),
    ] {
        let settings = test_settings();
        let port = free_port();
        let mut environment = kafka_bridge_environment(&settings, port, brokers, &missing);
        environment.push((
            "WEBHOOK_BRIDGE__KAFKA__METADATA_TIMEOUT_MS".to_owned(),
            "500".to_owned(),
        ));
        let bridge = BridgeProcess::spawn(environment);
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        wait_until_serving(&http, &base).await;
        let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        assert_eq!(response_json(ready).await["broker"], "down");

        // A callback for a missing topic fails at once, logged as needing an operator.
        let task_id = unique_task_id();
        if brokers == KAFKA_BROKERS {
            let response = http
                .post(format!("{base}/webhook"))
                .header("content-type", "application/json")
                .body(completed_body(&task_id))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 503);
        }

        let output = bridge.stop_with("TERM").await;
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(log.contains(&expected), "{expected}\n{log}");
        if brokers == KAFKA_BROKERS {
            let failure = format!(
                "task_id={task_id} event_type=task.completed retriable=false cause=publish failed: broker refused the event: topic test.{missing}.completed does not exist"
            );
            assert!(log.contains(&failure), "{failure}\n{log}");
        }
        remove_test_data(&settings).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_kafka_answers_503_in_time() {
    let closed = free_port();
    let app = spawn_app_with(|settings| {
        use_kafka(settings, &format!("127.0.0.1:{closed}"), &topic_id());
    })
    .await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert_eq!(response_json(ready).await["broker"], "down");

    let started = Instant::now();
    let response = app.post_callback(&completed_body(&unique_task_id())).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_millis(app.settings.broker.publish_timeout_ms + 500),
        "answered within the publish timeout"
    );
    assert!(app.keys().await.is_empty(), "the claim was released");
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_no_accepted_event() {
    let settings = test_settings();
    let id = topic_id();
    let [completed_topic, failed_topic] = topics_of(&id);
    create_topics(
        KAFKA_BROKERS,
        &[completed_topic.clone(), failed_topic.clone()],
    )
    .await;
    let port = free_port();
    let mut environment = kafka_bridge_environment(&settings, port, KAFKA_BROKERS, &id);
    environment.push((
        "WEBHOOK_BRIDGE__KAFKA__OPTIONS__SASL_PASSWORD".to_owned(),
        "kafka-hunter2".to_owned(),
    ));
    let bridge = BridgeProcess::spawn(environment);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&http, &base).await;

    let load: Vec<_> = (0..8)
        .map(|_| {
            let http = http.clone();
            let url = format!("{base}/webhook");
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                for _ in 0..200 {
                    let task_id = unique_task_id();
                    let response = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(completed_body(&task_id))
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status() == 200 => accepted.push(task_id),
                        Ok(response) => assert_eq!(response.status(), 503, "only 200 or 503"),
                        Err(_) => break,
                    }
                }
                accepted
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stop = tokio::spawn(bridge.stop_with("TERM"));

    let mut accepted = Vec::new();
    for task in load {
        accepted.extend(task.await.unwrap());
    }
    let output = stop.await.unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(
        log.contains("Kafka producer flushed; nothing is left undelivered."),
        "{log}"
    );
    assert!(log.contains(r#""sasl.password":"***""#), "{log}");
    assert!(
        !log.contains("kafka-hunter2"),
        "the secret option is not logged"
    );
    assert!(
        !accepted.is_empty(),
        "some requests were accepted before the stop"
    );

    let messages = consume(KAFKA_BROKERS, &completed_topic, accepted.len()).await;
    let published: std::collections::HashSet<_> = messages
        .iter()
        .filter_map(|message| message.key.clone())
        .collect();
    for task_id in &accepted {
        assert!(
            published.contains(task_id),
            "accepted {task_id} is in the topic"
        );
    }
    assert_eq!(
        published.len(),
        messages.len(),
        "no task was published twice"
    );
    // A request cut off by the stop may have been published without its response
    // arriving. Each load task stops at its first such error.
    assert!(messages.len() <= accepted.len() + 8);

    remove_test_data(&settings).await;
    delete_topics(KAFKA_BROKERS, &[completed_topic, failed_topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_messages_hide_secret_options() {
    let settings = test_settings();
    let port = free_port();
    let closed = format!("127.0.0.1:{}", free_port());
    let mut environment = kafka_bridge_environment(&settings, port, &closed, &topic_id());
    // librdkafka rejects this token configuration and quotes its second half in the error.
    for (key, value) in [
        ("SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        ("SASL_MECHANISMS", "OAUTHBEARER"),
        ("ENABLE_SASL_OAUTHBEARER_UNSECURE_JWT", "true"),
        ("SASL_OAUTHBEARER_CONFIG", "principal=bob hunter2LEAKME"),
    ] {
        environment.push((
            format!("WEBHOOK_BRIDGE__KAFKA__OPTIONS__{key}"),
            value.to_owned(),
        ));
    }
    let bridge = BridgeProcess::spawn(environment);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_serving(&http, &base).await;

    let output = bridge.stop_with("TERM").await;
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("Unrecognized sasl.oauthbearer.config beginning at: ***"),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_recovers_after_broker_restart() {
    let port = free_port();
    let mut broker = OwnBroker::start(port).await;
    let brokers = broker.brokers();
    let id = topic_id();
    create_topics(&brokers, &topics_of(&id)).await;
    let app = spawn_app_with(|settings| use_kafka(settings, &brokers, &id)).await;
    app.wait_ready(200, Duration::from_secs(10)).await;
    let before = completed_body(&unique_task_id());
    assert_eq!(app.post_callback(&before).await.status(), 200);

    // The new broker has lost every producer id, so the bridge's producer is unknown to it.
    broker.kill();
    let broker = OwnBroker::start(port).await;
    create_topics(&brokers, &topics_of(&id)).await;

    let task_id = unique_task_id();
    let body = completed_body(&task_id);
    let started = Instant::now();
    loop {
        let status = app.post_callback(&body).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "only 503 until the producer recovers");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the bridge recovered without a restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let messages = consume(&brokers, &app.settings.kafka.topic_completed, 1).await;
    let keys: Vec<_> = messages.iter().filter_map(|m| m.key.clone()).collect();
    assert!(
        keys.contains(&task_id),
        "published after the restart: {keys:?}"
    );
    app.teardown().await;
    drop(broker);
}
