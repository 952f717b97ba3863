//! The Prometheus scrape endpoint. Broker and Redis health are checked at each scrape, so
//! the gauges are as fresh as the scrape interval.

use actix_web::{HttpResponse, web};
use log::error;

use super::AppState;
use crate::metrics::CONTENT_TYPE;

/// Checks Redis (a PING within `redis.response_timeout_ms`) and the broker connection, then
/// responds with every metric in the text format 0.0.4.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let redis_up = state.dedup.ping().await.is_ok();
    state.metrics.set_redis_up(redis_up);
    state.metrics.set_broker_up(state.publisher.is_connected());

    match state.metrics.encode() {
        Ok(text) => HttpResponse::Ok().content_type(CONTENT_TYPE).body(text),
        Err(cause) => {
            error!(cause:% = cause; "Encoding the metrics failed.");
            HttpResponse::InternalServerError().finish()
        }
    }
}
