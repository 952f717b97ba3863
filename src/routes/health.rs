//! Liveness and readiness probes.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;

/// Responds 200 while the process serves HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Responds 200 when Redis replies to a PING and the broker connection is up, 503 otherwise.
/// With `redis.on_unavailable = "publish"`, callbacks go through without Redis, so only the
/// broker decides; the body still reports Redis as down.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let redis_up = state.dedup.ping().await.is_ok();
    let broker_up = state.publisher.is_connected();
    let ready = broker_up && (redis_up || !state.redis_required);
    let describe = |up: bool| if up { "up" } else { "down" };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "redis": describe(redis_up),
        "broker": describe(broker_up),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
