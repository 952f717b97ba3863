//! Re-deliveries publish once, sequential or concurrent. A different outcome for the same
//! task is a different event, and a claim owned by another request is waited for.

use std::time::Duration;

use redis::AsyncCommands;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_duplicate_publishes_once() {
    let app = spawn_app().await;
    let body = completed_body(&unique_task_id());

    let first = app.post_callback(&body).await;
    assert_eq!(first.status(), 200);
    assert_eq!(response_json(first).await["status"], "accepted");
    for _ in 0..3 {
        let again = app.post_callback(&body).await;
        assert_eq!(again.status(), 200);
        assert_eq!(response_json(again).await["status"], "duplicate");
    }

    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_publish_once() {
    let app = spawn_app_with(|settings| settings.server.workers = 2).await;
    let body = completed_body(&unique_task_id());

    let requests = (0..20).map(|_| app.post_callback(&body));
    let responses = futures_util::future::join_all(requests).await;
    let mut accepted = 0;
    let mut duplicates = 0;
    for response in responses {
        assert_eq!(response.status(), 200);
        match response_json(response).await["status"].as_str() {
            Some("accepted") => accepted += 1,
            Some("duplicate") => duplicates += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(duplicates, 19);
    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_outcome_is_published() {
    let app = spawn_app().await;
    let task_id = unique_task_id();

    assert_eq!(
        app.post_callback(&completed_body(&task_id)).await.status(),
        200
    );
    let failed = app.post_callback(&failed_body(&task_id)).await;
    assert_eq!(failed.status(), 200);
    assert_eq!(response_json(failed).await["status"], "accepted");

    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);
    assert_eq!(app.drain(app.failed_queue()).await.len(), 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_still_pending_answers_503() {
    let app = spawn_app_with(|settings| settings.redis.pending_wait_ms = 300).await;
    let task_id = unique_task_id();
    let key = app.dedup_key(&task_id, "completed");
    let mut redis = app.redis.clone();
    let _: () = redis
        .set_ex(&key, "pending:held-by-another-replica", 30)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let response = app.post_callback(&completed_body(&task_id)).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        response_json(response).await["error"],
        "delivery_in_progress"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the request waited"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the wait is bounded"
    );

    assert_eq!(
        app.redis_get(&key).await.as_deref(),
        Some("pending:held-by-another-replica"),
        "another request's claim is left alone"
    );
    assert!(app.drain(app.completed_queue()).await.is_empty());
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_claim_lets_waiter_publish() {
    let app = spawn_app().await;
    let task_id = unique_task_id();
    let key = app.dedup_key(&task_id, "completed");
    let mut redis = app.redis.clone();
    let _: () = redis.set_ex(&key, "pending:other", 30).await.unwrap();

    let body = completed_body(&task_id);
    let waiter = app.post_callback(&body);
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _: () = redis.del(&key).await.unwrap();
    };
    let (response, ()) = tokio::join!(waiter, release);
    assert_eq!(response.status(), 200);
    assert_eq!(response_json(response).await["status"], "accepted");
    assert_eq!(app.redis_get(&key).await.as_deref(), Some("done"));
    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_marked_done_answers_duplicate_to_waiter() {
    let app = spawn_app().await;
    let task_id = unique_task_id();
    let key = app.dedup_key(&task_id, "failed");
    let mut redis = app.redis.clone();
    let _: () = redis.set_ex(&key, "pending:other", 30).await.unwrap();

    let body = failed_body(&task_id);
    let waiter = app.post_callback(&body);
    let finish = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _: () = redis.set_ex(&key, "done", 60).await.unwrap();
    };
    let (response, ()) = tokio::join!(waiter, finish);
    assert_eq!(response.status(), 200);
    assert_eq!(response_json(response).await["status"], "duplicate");
    assert!(app.drain(app.failed_queue()).await.is_empty());
    app.teardown().await;
}
