//! The callback endpoint: authentication, media type and size checks, validation (a rejected
//! body becomes a dead letter), then delivery.

use std::time::SystemTime;

use actix_web::http::header;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use log::{debug, error};
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::AppState;
use crate::auth::Admission;
use crate::callback::Callback;
use crate::delivery::{DeliveryError, Outcome};
use crate::error::ApiError;
use crate::event::Event;

/// Receives one provider callback and responds only after the event is in the broker.
pub async fn receive_callback(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The guard lowers the in-flight gauge also when actix-web drops this future, as it does
    // when the client resets the connection.
    let in_flight = state.metrics.start_request();
    // Beyond the cap the 503 is returned at once, so that a flood of requests cannot build a
    // queue of bodies in memory.
    let Ok(permit) = state.in_flight_permits.clone().try_acquire_owned() else {
        let error = ApiError::Overloaded {
            retry_after_secs: state.retry_after_secs,
        };
        in_flight.finish(error.status(), error.code());
        debug!("Responding 503: server.max_in_flight callback requests are in flight.");
        return Err(error);
    };
    let forwarded = forward_callback(&request, payload, &state, permit).await;
    let (outcome, event) = match forwarded {
        Ok(forwarded) => forwarded,
        Err(error) => {
            in_flight.finish(error.status(), error.code());
            return Err(error);
        }
    };

    let status = match outcome {
        Outcome::Published => "accepted",
        Outcome::Duplicate => "duplicate",
    };
    in_flight.finish(status, "none");
    debug!(
        task_id:% = event.task_id, event_type = event.event_type.as_str();
        "Callback {status}."
    );
    Ok(HttpResponse::Ok().json(json!({
        "status": status,
        "event_id": event.id,
        "task_id": event.task_id.as_str(),
        "event_type": event.event_type.as_str(),
    })))
}

/// Checks, validates and delivers one callback, returning the delivered event. `permit` is
/// released when the delivery ends, even if the client hung up before.
async fn forward_callback(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    permit: OwnedSemaphorePermit,
) -> Result<(Outcome, Event), ApiError> {
    let received_at = SystemTime::now();
    // Networks and tokens are checked before the body is read. A signature covers the raw
    // body, so it is checked once the body is in, before the media type and the JSON.
    let admission = state.auth.check_head(request)?;
    if admission == Admission::Granted {
        require_json(request)?;
    }
    let body = tokio::time::timeout(
        state.body_read_timeout,
        read_body(request, payload, state.max_body_bytes),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout(state.body_read_timeout))??;
    if admission == Admission::NeedsSignature {
        state.auth.check_signature(request, &body, received_at)?;
        require_json(request)?;
    }
    let callback = match Callback::parse(&body) {
        Ok(callback) => callback,
        Err(cause) => {
            debug!(cause:% = cause; "Rejected callback.");
            let error = ApiError::from(cause);
            if let Some(dead_letters) = &state.dead_letters {
                let content_type = request
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|value| value.to_str().ok());
                dead_letters.send(&error, &body, content_type, received_at);
            }
            return Err(error);
        }
    };
    let event = Event::new(&callback, &body, &state.source, received_at);

    // The delivery runs as its own task so that a client that disconnects mid-publish
    // cannot cancel it between the broker's confirmation and the dedup record.
    let delivery = state.delivery.clone();
    let task = actix_web::rt::spawn(async move {
        let outcome = delivery.deliver(&event).await;
        drop(permit);
        (event, outcome)
    });
    let (event, outcome) = match task.await {
        Ok(finished) => finished,
        Err(cause) => {
            error!(
                task_id:% = callback.task_id, cause:% = cause;
                "Delivery task ended abnormally."
            );
            return Err(ApiError::Unavailable {
                cause: DeliveryError::Interrupted,
                retry_after_secs: state.retry_after_secs,
            });
        }
    };

    match outcome {
        Ok(outcome) => Ok((outcome, event)),
        Err(cause) => {
            error!(
                task_id:% = event.task_id,
                event_type = event.event_type.as_str(),
                retriable = cause.is_retriable(),
                cause:% = cause;
                "Answering 503: callback not forwarded."
            );
            Err(ApiError::Unavailable {
                cause,
                retry_after_secs: state.retry_after_secs,
            })
        }
    }
}

/// Accepts `application/json` and `application/*+json`, with no charset or UTF-8, and no
/// content coding: a compressed body would otherwise be rejected as invalid JSON.
fn require_json(request: &HttpRequest) -> Result<(), ApiError> {
    if let Some(coding) = request.headers().get(header::CONTENT_ENCODING) {
        let coding = coding.to_str().unwrap_or("").trim();
        if !coding.eq_ignore_ascii_case("identity") {
            return Err(ApiError::UnsupportedMediaType {
                header: "Content-Encoding",
                message: format!(
                    "Content-Encoding {coding} is not supported; send the JSON uncompressed"
                ),
            });
        }
    }
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        return Err(media_type_error(
            "Content-Type header is missing; send application/json",
        ));
    };
    let media_type: mime::Mime = value
        .to_str()
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            media_type_error("Content-Type header is not a valid media type; send application/json")
        })?;
    let is_json = media_type.type_() == mime::APPLICATION
        && (media_type.subtype() == mime::JSON || media_type.suffix() == Some(mime::JSON));
    if !is_json {
        return Err(media_type_error(format!(
            "Content-Type {} is not supported; send application/json",
            media_type.essence_str()
        )));
    }
    if let Some(charset) = media_type.get_param(mime::CHARSET)
        && charset != mime::UTF_8
    {
        return Err(media_type_error(format!(
            "charset {charset} is not supported; JSON must be UTF-8"
        )));
    }
    Ok(())
}

/// Reads the body, stopping with 413 as soon as the bytes received pass `limit`, whether
/// or not the request declared a length.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }

    let mut body = BytesMut::with_capacity(declared.map_or(0, |length| length as usize));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|cause| {
            debug!(cause:% = cause; "Reading the request body failed.");
            ApiError::BodyRead
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn media_type_error(message: impl Into<String>) -> ApiError {
    ApiError::UnsupportedMediaType {
        header: "Content-Type",
        message: message.into(),
    }
}
