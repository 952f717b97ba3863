//! The dedup store against the real Redis: a claim is released or marked done only while
//! it is still ours, and every key it writes has a TTL.

use std::time::SystemTime;

use redis::AsyncCommands;
use webhook_bridge::callback::Callback;
use webhook_bridge::dedup::{ClaimOutcome, DedupStore};
use webhook_bridge::event::Event;

use crate::helpers::*;

fn event(task_id: &str) -> Event {
    let body = failed_body(task_id);
    let callback = Callback::parse(body.as_bytes()).unwrap();
    Event::new(&callback, body.as_bytes(), "test", SystemTime::now())
}

async fn store_and_redis() -> (
    DedupStore,
    redis::aio::MultiplexedConnection,
    webhook_bridge::Settings,
) {
    let settings = test_settings();
    let store = DedupStore::new(&settings.redis).unwrap();
    let redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (store, redis, settings)
}

async fn claim(store: &DedupStore, event: &Event) -> webhook_bridge::dedup::Claim {
    match store.claim(event).await.unwrap() {
        ClaimOutcome::Claimed(claim) => claim,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_is_pending_with_ttl() {
    let (store, mut redis, settings) = store_and_redis().await;
    let event = event(&unique_task_id());
    let _claim = claim(&store, &event).await;

    let key = store.key(&event);
    let value: String = redis.get(&key).await.unwrap();
    assert!(value.starts_with("pending:"), "{value}");
    let ttl: i64 = redis.pttl(&key).await.unwrap();
    assert!(
        ttl > 0 && ttl <= settings.redis.pending_ttl_ms as i64,
        "TTL {ttl}"
    );
    remove_test_data(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_spares_another_claim() {
    let (store, mut redis, settings) = store_and_redis().await;
    let event = event(&unique_task_id());
    let claim = claim(&store, &event).await;
    let key = store.key(&event);

    // Our claim expired and another replica claimed the event.
    let _: () = redis
        .set_ex(&key, "pending:other-replica", 30)
        .await
        .unwrap();
    store.release(&claim).await.unwrap();
    let value: String = redis.get(&key).await.unwrap();
    assert_eq!(value, "pending:other-replica");
    remove_test_data(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_deletes_own_claim() {
    let (store, mut redis, settings) = store_and_redis().await;
    let event = event(&unique_task_id());
    let claim = claim(&store, &event).await;

    store.release(&claim).await.unwrap();
    let exists: bool = redis.exists(store.key(&event)).await.unwrap();
    assert!(!exists);
    remove_test_data(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_done_sets_dedup_ttl() {
    let (store, mut redis, settings) = store_and_redis().await;
    let event = event(&unique_task_id());
    let claim = claim(&store, &event).await;

    store.mark_done(&claim).await.unwrap();
    let key = store.key(&event);
    let value: String = redis.get(&key).await.unwrap();
    assert_eq!(value, "done");
    let ttl: i64 = redis.pttl(&key).await.unwrap();
    let window = settings.redis.dedup_ttl_secs as i64 * 1000;
    assert!(ttl > window - 60_000, "TTL {ttl}");
    assert!(ttl <= window, "TTL {ttl}");
    assert!(matches!(
        store.claim(&event).await.unwrap(),
        ClaimOutcome::AlreadyDone
    ));
    remove_test_data(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_done_spares_another_claim() {
    let (store, mut redis, settings) = store_and_redis().await;
    let event = event(&unique_task_id());
    let claim = claim(&store, &event).await;
    let key = store.key(&event);

    let _: () = redis
        .set_ex(&key, "pending:other-replica", 30)
        .await
        .unwrap();
    store.mark_done(&claim).await.unwrap();
    let value: String = redis.get(&key).await.unwrap();
    assert_eq!(value, "pending:other-replica");
    remove_test_data(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_done_after_expiry_keeps_ttl() {
    let (store, mut redis, settings) = store_and_redis().await;
    let event = event(&unique_task_id());
    let claim = claim(&store, &event).await;
    let key = store.key(&event);

    // The claim expired before the broker confirmed; the event is still recorded, with a TTL.
    let _: () = redis.del(&key).await.unwrap();
    store.mark_done(&claim).await.unwrap();
    let value: String = redis.get(&key).await.unwrap();
    assert_eq!(value, "done");
    let ttl: i64 = redis.pttl(&key).await.unwrap();
    assert!(ttl > 0, "TTL {ttl}");
    remove_test_data(&settings).await;
}
