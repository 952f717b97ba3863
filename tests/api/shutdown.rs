//! Graceful shutdown: in-flight requests finish publishing, and every request that got
//! a 2xx is in the broker.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::{Connection, ConnectionProperties};

use crate::helpers::*;
use crate::proxy::{Mode, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_lets_in_flight_requests_finish() {
    let proxy = Proxy::start(AMQP_ADDRESS.parse().unwrap()).await;
    let app = spawn_app_with(|settings| {
        settings.broker.publish_timeout_ms = 5_000;
        settings.redis.pending_ttl_ms = 20_000;
        settings.rabbitmq.url = amqp_through(&proxy);
    })
    .await;

    // Hold the publishes in flight while the stop begins.
    proxy.set(Mode::Stall);
    let bodies: Vec<String> = (0..10).map(|_| completed_body(&unique_task_id())).collect();
    let requests =
        futures_util::future::join_all(bodies.iter().map(|body| app.post_callback(body)));
    let stop_then_release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stop = app.stop();
        let release = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            proxy.set(Mode::Forward);
        };
        tokio::join!(stop, release);
    };
    let (responses, ()) = tokio::join!(requests, stop_then_release);

    for response in responses {
        assert_eq!(response.status(), 200, "in-flight request finished");
    }
    assert_eq!(app.drain(app.completed_queue()).await.len(), 10);
    let settings = app.settings.clone();
    assert!(app.join().await.is_ok(), "server stopped cleanly");
    remove_test_data(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_no_accepted_event() {
    let settings = test_settings();
    let port = free_port();
    let bridge = BridgeProcess::spawn(bridge_environment(&settings, port));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&http, &base).await;

    // Load that keeps running while SIGTERM arrives.
    let load = (0..8).map(|_| {
        let http = http.clone();
        let url = format!("{base}/webhook");
        tokio::spawn(async move {
            let mut accepted = 0;
            for _ in 0..200 {
                let body = completed_body(&unique_task_id());
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status() == 200 => accepted += 1,
                    Ok(response) => assert_eq!(response.status(), 503, "only 200 or 503"),
                    Err(_) => break,
                }
            }
            accepted
        })
    });
    let load: Vec<_> = load.collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = tokio::spawn(bridge.stop_with("TERM"));

    let mut accepted = 0;
    for task in load {
        accepted += task.await.unwrap();
    }
    let output = stop.await.unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("config={"),
        "the effective configuration is logged: {log}"
    );
    assert!(log.contains("amqp://guest:***@"), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("RabbitMQ connection closed."), "{log}");
    assert!(
        !log.contains("Closing the RabbitMQ"),
        "the close itself succeeds: {log}"
    );
    assert!(
        !log.contains("guest:guest@"),
        "the broker password is not logged"
    );
    assert!(accepted > 0, "some requests were accepted before the stop");

    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut published = 0;
    while channel
        .basic_get(
            settings.rabbitmq.queue_completed.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .is_some()
    {
        published += 1;
    }
    // A request cut off by the stop may have been published without its response
    // arriving. Each load task stops at its first such error.
    assert!(
        published >= accepted,
        "every 2xx is in the broker: {published} < {accepted}"
    );
    assert!(
        published <= accepted + 8,
        "{published} published for {accepted} accepted"
    );

    remove_test_data(&settings).await;
}
