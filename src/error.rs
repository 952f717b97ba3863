//! Mapping of request failures to HTTP responses, in one place. Bodies are JSON with a stable
//! `error` code; internal error text never reaches a response.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::callback::CallbackError;
use crate::delivery::DeliveryError;

/// A request that was not forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or invalid credentials, or a client network that is not allowed. The response
    /// is the same whatever failed, so that it tells a prober nothing.
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// The body's media type or content coding is not plain JSON; `header` names the header.
    #[error("{message}")]
    UnsupportedMediaType {
        header: &'static str,
        message: String,
    },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body could not be read completely; send it again")]
    BodyRead,
    #[error("request body was not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error(transparent)]
    Callback(#[from] CallbackError),
    /// `server.max_in_flight` callback requests are already being handled.
    #[error("too many callbacks are being handled at once; retry later")]
    Overloaded { retry_after_secs: u64 },
    #[error("callback could not be forwarded now: {cause}")]
    Unavailable {
        cause: DeliveryError,
        retry_after_secs: u64,
    },
}

/// `error` code of the response to a path that the bridge does not serve.
pub const NOT_FOUND: &str = "not_found";

/// `error` code of the response to a method that a path does not serve.
pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: &'static str,
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    message: String,
}

impl ApiError {
    /// Every code that [`ApiError::code`] returns. With [`NOT_FOUND`] and
    /// [`METHOD_NOT_ALLOWED`], these are all the codes that a response can carry, and
    /// `docs/openapi.yaml` lists each of them.
    pub const CODES: [&'static str; 12] = [
        "unauthorized",
        "unsupported_media_type",
        "payload_too_large",
        "body_read_failed",
        "body_read_timeout",
        "invalid_json",
        "invalid_payload",
        "overloaded",
        "dedup_unavailable",
        "delivery_in_progress",
        "broker_unavailable",
        "delivery_interrupted",
    ];

    /// Returns the response's `status`: `unavailable` when the provider should retry,
    /// `rejected` when the request itself is wrong.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } | Self::Overloaded { .. } => "unavailable",
            _ => "rejected",
        }
    }

    /// Returns the response's `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::BodyRead => "body_read_failed",
            Self::BodyTimeout(_) => "body_read_timeout",
            Self::Callback(CallbackError::Malformed { .. }) => "invalid_json",
            Self::Callback(CallbackError::Invalid { .. }) => "invalid_payload",
            Self::Overloaded { .. } => "overloaded",
            Self::Unavailable { cause, .. } => match cause {
                DeliveryError::Dedup(_) => "dedup_unavailable",
                DeliveryError::StillPending => "delivery_in_progress",
                DeliveryError::Publish(_) => "broker_unavailable",
                DeliveryError::Interrupted => "delivery_interrupted",
            },
        }
    }

    /// Returns the response's `field` (the value or header at fault, when known) and
    /// `message`.
    pub fn detail(&self) -> (Option<&str>, String) {
        match self {
            Self::Callback(CallbackError::Invalid { field, reason }) => {
                (Some(field.as_str()), reason.clone())
            }
            Self::Callback(CallbackError::Malformed { field, message }) => {
                (field.as_deref(), message.clone())
            }
            Self::UnsupportedMediaType { header, message } => (Some(*header), message.clone()),
            Self::Unavailable { cause, .. } => {
                let message = match cause {
                    DeliveryError::Dedup(_) => "deduplication store is unavailable; retry later",
                    DeliveryError::StillPending => {
                        "another delivery of this event is still being published; retry later"
                    }
                    DeliveryError::Publish(_) | DeliveryError::Interrupted => {
                        "the event broker did not confirm the event; retry later"
                    }
                };
                (None, message.to_owned())
            }
            other => (None, other.to_string()),
        }
    }

    fn body(&self) -> ErrorBody<'_> {
        let (field, message) = self.detail();
        ErrorBody {
            status: self.status(),
            error: self.code(),
            field,
            message,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRead => StatusCode::BAD_REQUEST,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Callback(CallbackError::Malformed { .. }) => StatusCode::BAD_REQUEST,
            Self::Callback(CallbackError::Invalid { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable { .. } | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unavailable {
                retry_after_secs, ..
            }
            | Self::Overloaded { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from(*retry_after_secs)));
            }
            // RFC 9110 requires a challenge on every 401. It is the same for every failure.
            Self::Unauthorized => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="webhook-bridge""#),
                ));
            }
            _ => {}
        }
        response.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::dedup::DedupError;
    use crate::publisher::PublishError;

    #[test]
    fn codes_lists_every_code() {
        let errors = [
            ApiError::Unauthorized,
            ApiError::UnsupportedMediaType {
                header: "Content-Type",
                message: String::new(),
            },
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::BodyRead,
            ApiError::BodyTimeout(Duration::from_secs(1)),
            ApiError::Callback(CallbackError::Malformed {
                field: None,
                message: String::new(),
            }),
            ApiError::Callback(CallbackError::Invalid {
                field: String::new(),
                reason: String::new(),
            }),
            ApiError::Overloaded {
                retry_after_secs: 1,
            },
        ];
        let causes = [
            DeliveryError::Dedup(DedupError::Timeout(Duration::from_secs(1))),
            DeliveryError::StillPending,
            DeliveryError::Publish(PublishError::NotConnected),
            DeliveryError::Interrupted,
        ];
        let unavailable = causes.into_iter().map(|cause| ApiError::Unavailable {
            cause,
            retry_after_secs: 1,
        });
        let produced: BTreeSet<&'static str> = errors
            .into_iter()
            .chain(unavailable)
            .map(|error| error.code())
            .collect();
        let listed: BTreeSet<&str> = ApiError::CODES.into_iter().collect();
        assert_eq!(produced, listed);
        assert_eq!(
            listed.len(),
            ApiError::CODES.len(),
            "no code is listed twice"
        );
    }
}
