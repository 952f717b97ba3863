//! HTTP routes: the callback endpoint, health checks, Prometheus metrics, and JSON responses
//! for unknown paths and methods.

mod health;
mod metrics;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::auth::{Authenticator, TOKEN_PARAMETER};
use crate::dead_letter::DeadLetters;
use crate::dedup::DedupStore;
use crate::delivery::Delivery;
use crate::error::{METHOD_NOT_ALLOWED, NOT_FOUND};
use crate::metrics::Metrics;
use crate::publisher::Publisher;

/// State shared by every request handler.
pub struct AppState {
    pub auth: Arc<Authenticator>,
    pub delivery: Arc<Delivery>,
    /// Publisher of rejected bodies; `None` when `dead_letter.enabled` is off.
    pub dead_letters: Option<Arc<DeadLetters>>,
    pub dedup: DedupStore,
    pub publisher: Arc<dyn Publisher>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub source: String,
    pub retry_after_secs: u64,
    /// Whether callbacks need Redis: false with `redis.on_unavailable = "publish"`, which
    /// publishes without deduplication while Redis is down.
    pub redis_required: bool,
    /// One permit per callback request in flight, `server.max_in_flight` in all.
    pub in_flight_permits: Arc<Semaphore>,
}

/// Registers every route, with `webhook_path` as the callback endpoint. With `path_tokens`,
/// the endpoint is also served on `<webhook_path>/<token>`.
pub fn configure(config: &mut web::ServiceConfig, webhook_path: &str, path_tokens: bool) {
    if path_tokens {
        config.service(
            web::resource(format!("{webhook_path}/{{{TOKEN_PARAMETER}}}"))
                .route(web::post().to(webhook::receive_callback))
                .default_service(web::to(|| method_not_allowed("POST"))),
        );
    }
    config
        .service(
            web::resource(webhook_path)
                .route(web::post().to(webhook::receive_callback))
                .default_service(web::to(|| method_not_allowed("POST"))),
        )
        .service(
            web::resource("/healthz")
                .route(web::get().to(health::healthz))
                .route(web::head().to(health::healthz))
                .default_service(web::to(|| method_not_allowed("GET"))),
        )
        .service(
            web::resource("/readyz")
                .route(web::get().to(health::readyz))
                .route(web::head().to(health::readyz))
                .default_service(web::to(|| method_not_allowed("GET"))),
        )
        .service(
            web::resource("/metrics")
                // No HEAD: Prometheus never sends it, and each scrape pings Redis.
                .route(web::get().to(metrics::metrics))
                .default_service(web::to(|| method_not_allowed("GET"))),
        )
        .default_service(web::to(not_found));
}

async fn method_not_allowed(allowed: &'static str) -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, allowed))
        .json(json!({
            "status": "rejected",
            "error": METHOD_NOT_ALLOWED,
            "message": format!("this path accepts {allowed} only"),
        }))
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({
        "status": "rejected",
        "error": NOT_FOUND,
        "message": "no such path",
    }))
}
