//! Dead letters: callbacks that passed authentication but were rejected with 400 or 422 are
//! published, with the reason, to a destination of their own, so that a malformed callback is
//! kept for inspection. The response does not wait for the broker: a spawned task publishes
//! each dead letter within `broker.publish_timeout_ms`, and a failure is counted and logged.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_web::ResponseError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use log::{debug, warn};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::event::{rfc3339, unix_millis, unix_secs};
use crate::log_throttle::LogThrottle;
use crate::metrics::{Metrics, publish_failure_reason};
use crate::publisher::Publisher;

/// CloudEvents `type` of a dead letter, also its message type on the broker.
pub const DEAD_LETTER_TYPE: &str = "task.invalid";

/// Maximum length in bytes of a task id taken from a rejected body into the subject, the Kafka
/// key and the logs. A longer one stays in the body only.
const MAX_SUBJECT_BYTES: usize = 255;

/// Interval between two log lines for one kind of dead-letter failure.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A rejected callback ready to publish.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// A random UUID, the CloudEvents `id`.
    pub id: String,
    /// The `task_id` string of the body, when it has one of at most 255 bytes.
    pub task_id: Option<String>,
    /// The CloudEvents `source` attribute.
    pub source: String,
    /// When the bridge received the callback.
    pub time: SystemTime,
    /// The serialised CloudEvents document.
    pub payload: Vec<u8>,
}

#[derive(Serialize)]
struct Document<'a> {
    specversion: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    time: &'a str,
    datacontenttype: &'static str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    reason: Reason<'a>,
    /// The request's `Content-Type` header.
    content_type: Option<&'a str>,
    /// The body as received, when it is valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    /// The body in standard base64, when it is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    received_at: &'a str,
}

/// The response that the client got.
#[derive(Serialize)]
struct Reason<'a> {
    status: u16,
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    message: String,
}

impl DeadLetter {
    /// Builds the dead letter of a request whose `body` was rejected with `error`.
    pub fn new(
        error: &ApiError,
        body: &[u8],
        content_type: Option<&str>,
        source: &str,
        time: SystemTime,
    ) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let task_id = task_id_of(body);
        let time_text = rfc3339(time);
        let (field, message) = error.detail();
        let text = std::str::from_utf8(body).ok();
        let document = Document {
            specversion: "1.0",
            id: &id,
            event_type: DEAD_LETTER_TYPE,
            source,
            subject: task_id.as_deref(),
            time: &time_text,
            datacontenttype: "application/json",
            data: Data {
                reason: Reason {
                    status: error.status_code().as_u16(),
                    error: error.code(),
                    field,
                    message,
                },
                content_type,
                body: text,
                body_base64: text.is_none().then(|| BASE64.encode(body)),
                received_at: &time_text,
            },
        };
        let payload = serde_json::to_vec(&document).expect("string fields always serialise");
        Self {
            id,
            task_id,
            source: source.to_owned(),
            time,
            payload,
        }
    }

    /// Returns the CloudEvents `time` attribute, formatted as in the document.
    pub fn rfc3339_time(&self) -> String {
        rfc3339(self.time)
    }

    /// Milliseconds since the Unix epoch at which the callback was received.
    pub fn unix_time_millis(&self) -> i64 {
        unix_millis(self.time)
    }

    /// Seconds since the Unix epoch at which the callback was received.
    pub fn unix_time(&self) -> u64 {
        unix_secs(self.time)
    }
}

/// Returns the `task_id` string of a JSON object body, when it is at most
/// [`MAX_SUBJECT_BYTES`] long and has no control characters, so that it is safe to log.
fn task_id_of(body: &[u8]) -> Option<String> {
    let document: Value = serde_json::from_slice(body).ok()?;
    let task_id = document.get("task_id")?.as_str()?;
    let printable = !task_id.is_empty() && !task_id.chars().any(char::is_control);
    (printable && task_id.len() <= MAX_SUBJECT_BYTES).then(|| task_id.to_owned())
}

/// Publishes dead letters in the background, at most `server.max_in_flight` at a time.
pub struct DeadLetters {
    publisher: Arc<dyn Publisher>,
    metrics: Arc<Metrics>,
    source: String,
    /// Bounds the dead letters being published, so that a flood of rejected requests during
    /// a broker stall cannot pile up bodies in memory.
    permits: Arc<Semaphore>,
    failure_log: Arc<LogThrottle<&'static str>>,
}

impl DeadLetters {
    pub fn new(
        publisher: Arc<dyn Publisher>,
        metrics: Arc<Metrics>,
        source: String,
        max_pending: usize,
    ) -> Self {
        Self {
            publisher,
            metrics,
            source,
            permits: Arc::new(Semaphore::new(max_pending)),
            failure_log: Arc::new(LogThrottle::new(FAILURE_LOG_INTERVAL)),
        }
    }

    /// Starts publishing the dead letter of a request rejected with `error`, and returns at
    /// once. The publish ends within the publisher's timeout.
    pub fn send(
        &self,
        error: &ApiError,
        body: &[u8],
        content_type: Option<&str>,
        time: SystemTime,
    ) {
        let dead_letter = DeadLetter::new(error, body, content_type, &self.source, time);
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.record_dead_letter(false);
            log_failure(
                &self.failure_log,
                &dead_letter,
                "too_many_pending",
                "too many dead letters are being published",
            );
            return;
        };

        let publisher = self.publisher.clone();
        let metrics = self.metrics.clone();
        let failure_log = self.failure_log.clone();
        let reason = error.code();
        actix_web::rt::spawn(async move {
            let published = publisher.publish_dead_letter(&dead_letter).await;
            drop(permit);
            metrics.record_dead_letter(published.is_ok());
            match published {
                Ok(()) => debug!(
                    id = dead_letter.id.as_str(), reason = reason;
                    "Published the dead letter of a rejected callback."
                ),
                Err(cause) => log_failure(
                    &failure_log,
                    &dead_letter,
                    publish_failure_reason(&cause),
                    &cause.to_string(),
                ),
            }
        });
    }
}

fn log_failure(
    throttle: &LogThrottle<&'static str>,
    dead_letter: &DeadLetter,
    kind: &'static str,
    cause: &str,
) {
    let Some(left_out) = throttle.admit(kind) else {
        return;
    };
    warn!(
        id = dead_letter.id.as_str(),
        task_id = dead_letter.task_id.as_deref().unwrap_or("-"),
        cause:% = cause,
        repeats_not_logged = left_out;
        "Publishing the dead letter of a rejected callback failed; it is lost."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    use crate::callback::Callback;

    fn rejection(body: &[u8]) -> ApiError {
        ApiError::from(Callback::parse(body).expect_err("the body is rejected"))
    }

    #[test]
    fn document_carries_reason_and_body() {
        let body = br#"{"task_id":"t-1","status":"done"}"#;
        let time = UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
        let dead_letter = DeadLetter::new(
            &rejection(body),
            body,
            Some("application/json"),
            "urn:bridge",
            time,
        );

        let document: Value = serde_json::from_slice(&dead_letter.payload).unwrap();
        assert_eq!(document["type"], "task.invalid");
        assert_eq!(document["source"], "urn:bridge");
        assert_eq!(document["subject"], "t-1");
        assert_eq!(document["id"], dead_letter.id.as_str());
        assert_eq!(document["time"], "2026-05-28T20:26:40.123Z");
        let data = &document["data"];
        assert_eq!(data["reason"]["status"], 422);
        assert_eq!(data["reason"]["error"], "invalid_payload");
        assert_eq!(data["reason"]["field"], "status");
        assert!(data["reason"]["message"].is_string());
        assert_eq!(data["content_type"], "application/json");
        assert_eq!(data["body"].as_str().unwrap().as_bytes(), body);
        assert!(data.get("body_base64").is_none());
        assert_eq!(data["received_at"], "2026-05-28T20:26:40.123Z");
        assert_eq!(dead_letter.task_id.as_deref(), Some("t-1"));
    }

    #[test]
    fn body_that_is_not_utf8_is_base64() {
        let body = b"{\"task_id\":\"\xff\"}";
        let dead_letter = DeadLetter::new(
            &rejection(body),
            body,
            None,
            "urn:bridge",
            SystemTime::now(),
        );

        let document: Value = serde_json::from_slice(&dead_letter.payload).unwrap();
        let data = &document["data"];
        assert_eq!(data["reason"]["status"], 400);
        assert_eq!(data["reason"]["error"], "invalid_json");
        assert!(data.get("body").is_none());
        assert_eq!(data["body_base64"], BASE64.encode(body));
        assert!(data["content_type"].is_null());
        assert!(document.get("subject").is_none());
    }

    #[test]
    fn unsafe_task_ids_stay_out_of_the_subject() {
        let long = format!(r#"{{"task_id":"{}"}}"#, "a".repeat(MAX_SUBJECT_BYTES + 1));
        for body in [
            long.as_bytes(),
            br#"{"task_id":"a\nb"}"#,
            br#"{"task_id":7}"#,
            b"[1]",
            b"not json",
        ] {
            assert_eq!(task_id_of(body), None, "{}", String::from_utf8_lossy(body));
        }
    }
}
