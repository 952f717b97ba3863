//! The outbound event: a CloudEvents 1.0 JSON document in structured mode whose `data`
//! is the callback exactly as received, byte for byte.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::callback::{Callback, Status, TaskId, parse_document};

/// CloudEvents `type` and routing key of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    TaskCompleted,
    TaskFailed,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskCompleted => "task.completed",
            Self::TaskFailed => "task.failed",
        }
    }
}

impl From<Status> for EventType {
    fn from(status: Status) -> Self {
        match status {
            Status::Completed => Self::TaskCompleted,
            Status::Failed => Self::TaskFailed,
        }
    }
}

/// Media type of the structured-mode document, for transport headers.
pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

/// An event ready to publish.
#[derive(Debug, Clone)]
pub struct Event {
    /// `<task_id>:<status>`, the CloudEvents `id` and the dedup identity.
    pub id: String,
    pub event_type: EventType,
    pub task_id: TaskId,
    pub status: Status,
    /// The CloudEvents `source` attribute.
    pub source: String,
    /// When the bridge received the callback.
    pub time: SystemTime,
    /// The serialised CloudEvents document.
    pub payload: Vec<u8>,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    source: &'a str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    data: &'a RawValue,
}

impl Event {
    /// Builds the event for a validated callback; `body` must be the bytes it was parsed from.
    pub fn new(callback: &Callback, body: &[u8], source: &str, time: SystemTime) -> Self {
        let id = format!("{}:{}", callback.task_id, callback.status.as_str());
        let event_type = EventType::from(callback.status);
        // `Callback::parse` accepted these bytes, so they are one JSON document.
        let data = parse_document(body).expect("a validated body is one JSON document");
        let document = CloudEvent {
            specversion: "1.0",
            id: &id,
            event_type: event_type.as_str(),
            source,
            subject: callback.task_id.as_str(),
            time: rfc3339(time),
            datacontenttype: "application/json",
            data,
        };
        let payload = serde_json::to_vec(&document).expect("string fields always serialise");
        Self {
            id,
            event_type,
            task_id: callback.task_id.clone(),
            status: callback.status,
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

/// Formats a time as RFC 3339 in UTC with milliseconds, as CloudEvents `time`.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// Milliseconds since the Unix epoch, as Kafka message timestamps count; 0 before it.
pub(crate) fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, as AMQP timestamps count; 0 before it.
pub(crate) fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(serde::Deserialize)]
    struct Parsed<'a> {
        specversion: String,
        id: String,
        #[serde(rename = "type")]
        event_type: String,
        source: String,
        subject: String,
        time: String,
        datacontenttype: String,
        #[serde(borrow)]
        data: &'a RawValue,
    }

    #[test]
    fn document_carries_callback_byte_for_byte() {
        let body = br#"{"task_id":"b7e1","status":"completed","data":{"image_urls":["https://cdn.example.com/o/1.png"],"seed":12345678901234567890123,"z":1.10,"a":"\u00e9"}}"#;
        let callback = Callback::parse(body).unwrap();
        let time = UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
        let event = Event::new(&callback, body, "urn:bridge", time);

        let parsed: Parsed<'_> = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(parsed.specversion, "1.0");
        assert_eq!(parsed.id, "b7e1:completed");
        assert_eq!(parsed.event_type, "task.completed");
        assert_eq!(parsed.source, "urn:bridge");
        assert_eq!(parsed.subject, "b7e1");
        assert_eq!(parsed.time, "2026-05-28T20:26:40.123Z");
        assert_eq!(parsed.datacontenttype, "application/json");
        assert_eq!(parsed.data.get().as_bytes(), body);
        assert_eq!(event.unix_time(), 1_780_000_000);
        assert_eq!(event.unix_time_millis(), 1_780_000_000_123);
        assert_eq!(event.rfc3339_time(), parsed.time);
    }

    #[test]
    fn failed_callback_maps_to_failed_type() {
        let body =
            br#"{"task_id":"c9f0","status":"failed","error_message":"Content policy violation"}"#;
        let callback = Callback::parse(body).unwrap();
        let event = Event::new(&callback, body, "webhook-bridge", SystemTime::now());
        assert_eq!(event.event_type, EventType::TaskFailed);
        assert_eq!(event.id, "c9f0:failed");
    }
}
