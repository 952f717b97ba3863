//! Liveness and readiness probes.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;

/// Responds 200 while the process serves HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Responds 200 when Redis replies to a PING and the broker connection is up, 503 otherwise.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let redis_up = state.dedup.ping().await.is_ok();
    let broker_up = state.publisher.is_connected();
    let describe = |up: bool| if up { "up" } else { "down" };
    let body = json!({
        "status": if redis_up && broker_up { "ready" } else { "not_ready" },
        "redis": describe(redis_up),
        "broker": describe(broker_up),
    });
    if redis_up && broker_up {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
