//! Feeds arbitrary bytes to `Callback::parse` and builds the CloudEvent for every accepted
//! body. The checks: only JSON objects are accepted, the event is one JSON document, its
//! `data` is the body byte for byte (without surrounding whitespace), and its `id` and
//! `subject` name the callback's task and status.
//!
//! The parsing modules are compiled from `../src` directly. They need only serde, url and
//! humantime, so the fuzz build skips librdkafka, OpenSSL and the rest of the service, which
//! would otherwise be rebuilt with sanitizer flags.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;

#[allow(dead_code, unused_imports)]
#[path = "../../src/callback/mod.rs"]
mod callback;
#[allow(dead_code, unused_imports)]
#[path = "../../src/event.rs"]
mod event;

use callback::{Callback, CallbackError};
use event::Event;

/// The event attributes that the checks read.
#[derive(Deserialize)]
struct EventDocument<'a> {
    id: String,
    subject: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

fuzz_target!(|body: &[u8]| {
    let callback = match Callback::parse(body) {
        Ok(callback) => callback,
        Err(CallbackError::Malformed { .. } | CallbackError::Invalid { .. }) => return,
    };
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    assert_eq!(
        first,
        Some(&b'{'),
        "accepted a body that is not a JSON object"
    );

    let time = UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
    let event = Event::new(&callback, body, "urn:fuzz", time);
    assert_eq!(event.task_id, callback.task_id);
    assert_eq!(event.status, callback.status);

    let document: EventDocument<'_> =
        serde_json::from_slice(&event.payload).expect("the event is one JSON document");
    let task_id = callback.task_id.as_str();
    assert_eq!(document.subject, task_id);
    assert_eq!(
        document.id,
        format!("{task_id}:{}", callback.status.as_str())
    );
    assert_eq!(document.event_type, event.event_type.as_str());
    // JSON whitespace around the document is not part of the value, so it is not forwarded.
    assert_eq!(document.data.get().as_bytes(), body.trim_ascii());
});
