//! The provider's callback: raw request bytes become a validated [`Callback`] before Redis
//! or a broker receives them. Errors name the field and the reason, so the provider or its
//! operators can fix the payload.

use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

mod document;
#[cfg(test)]
mod properties;

use document::check_structure;
pub use document::{MAX_NESTING_DEPTH, parse_document};

/// Longest accepted `task_id`, in characters.
pub const MAX_TASK_ID_CHARS: usize = 256;

/// Longest accepted output URL, in bytes. Signed CDN URLs run to a few hundred bytes, and
/// 4 KiB leaves room for long query strings while keeping events small.
pub const MAX_URL_BYTES: usize = 4096;

/// Output fields that hold a single URL.
const SINGLE_OUTPUTS: [&str; 3] = ["video_url", "image_url", "audio_url"];

/// Output fields that hold a non-empty array of URLs.
const LIST_OUTPUTS: [&str; 3] = ["video_urls", "image_urls", "audio_urls"];

/// Reason a request body was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// The body is not one interoperable JSON document (HTTP 400). `field` names the value
    /// at fault when the syntax is valid, as for a duplicate key.
    #[error("{message}")]
    Malformed {
        field: Option<String>,
        message: String,
    },
    /// The body is JSON but breaks a rule (HTTP 422).
    #[error("field `{field}` {reason}")]
    Invalid { field: String, reason: String },
}

impl CallbackError {
    fn malformed(message: impl Into<String>) -> Self {
        Self::Malformed {
            field: None,
            message: message.into(),
        }
    }

    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A task identifier: 1 to 256 characters, none of them whitespace or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskId(String);

impl TaskId {
    pub fn parse(value: String) -> Result<Self, CallbackError> {
        if value.is_empty() {
            return Err(CallbackError::invalid("task_id", "must not be empty"));
        }
        if value.chars().count() > MAX_TASK_ID_CHARS {
            return Err(CallbackError::invalid(
                "task_id",
                format!("must be at most {MAX_TASK_ID_CHARS} characters long"),
            ));
        }
        if value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_invisible_format(c))
        {
            return Err(CallbackError::invalid(
                "task_id",
                "must not contain whitespace, control or invisible formatting characters",
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Zero-width and bidirectional formatting characters, which make different ids look alike.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

impl fmt::Display for TaskId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// The outcome of the task that the callback reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Completed,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

/// A validated callback. The body it came from is forwarded unchanged; this type only
/// carries what the bridge needs to route and deduplicate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub task_id: TaskId,
    pub status: Status,
}

/// The top-level fields the bridge reads. All other fields are skipped without being
/// decoded, so values such as numbers beyond 64 bits cannot fail parsing.
#[derive(Deserialize)]
struct WireCallback<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    task_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    status: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error_message: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireData<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    video_url: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    image_url: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    audio_url: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    video_urls: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    image_urls: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    audio_urls: Option<&'a RawValue>,
}

/// Reads a field that is present, `null` included, so that `"video_url": null` is reported
/// as a wrong type rather than as a missing field.
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

impl WireData<'_> {
    fn single(&self, name: &str) -> Option<&RawValue> {
        match name {
            "video_url" => self.video_url,
            "image_url" => self.image_url,
            "audio_url" => self.audio_url,
            _ => None,
        }
    }

    fn list(&self, name: &str) -> Option<&RawValue> {
        match name {
            "video_urls" => self.video_urls,
            "image_urls" => self.image_urls,
            "audio_urls" => self.audio_urls,
            _ => None,
        }
    }
}

impl Callback {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8]) -> Result<Self, CallbackError> {
        let document = parse_document(body)?;
        if !document.get().starts_with('{') {
            return Err(CallbackError::invalid("body", "must be a JSON object"));
        }
        check_structure(document.get())?;
        let wire: WireCallback<'_> = serde_json::from_str(document.get())
            .map_err(|error| CallbackError::invalid("body", strip_position(&error)))?;

        let task_id = TaskId::parse(require_string("task_id", wire.task_id)?)?;
        let status = match require_string("status", wire.status)?.as_str() {
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            _ => {
                return Err(CallbackError::invalid(
                    "status",
                    "must be \"completed\" or \"failed\"",
                ));
            }
        };
        match status {
            Status::Completed => validate_outputs(wire.data)?,
            Status::Failed => {
                require_string("error_message", wire.error_message)?;
            }
        }
        Ok(Self { task_id, status })
    }
}

/// Drops serde_json's "at line 1 column 42" suffix where the message names a field.
fn strip_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.find(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message,
    }
}

fn require_string(field: &str, value: Option<&RawValue>) -> Result<String, CallbackError> {
    let value = value.ok_or_else(|| CallbackError::invalid(field, "is required"))?;
    serde_json::from_str::<String>(value.get())
        .map_err(|_| CallbackError::invalid(field, "must be a string"))
}

fn validate_outputs(data: Option<&RawValue>) -> Result<(), CallbackError> {
    let data = data.ok_or_else(|| {
        CallbackError::invalid("data", "is required when status is \"completed\"")
    })?;
    if !data.get().starts_with('{') {
        return Err(CallbackError::invalid("data", "must be an object"));
    }
    let outputs: WireData<'_> = serde_json::from_str(data.get())
        .map_err(|error| CallbackError::invalid("data", strip_position(&error)))?;

    let mut found = false;
    for name in SINGLE_OUTPUTS {
        if let Some(value) = outputs.single(name) {
            let field = format!("data.{name}");
            validate_url(&field, &require_string(&field, Some(value))?)?;
            found = true;
        }
    }
    for name in LIST_OUTPUTS {
        if let Some(value) = outputs.list(name) {
            validate_url_list(&format!("data.{name}"), value)?;
            found = true;
        }
    }
    if !found {
        return Err(CallbackError::invalid(
            "data",
            "must contain at least one output: video_url, image_url, audio_url, \
             video_urls, image_urls or audio_urls",
        ));
    }
    Ok(())
}

fn validate_url_list(field: &str, value: &RawValue) -> Result<(), CallbackError> {
    let items: Vec<&RawValue> = serde_json::from_str(value.get())
        .map_err(|_| CallbackError::invalid(field, "must be an array of URL strings"))?;
    if items.is_empty() {
        return Err(CallbackError::invalid(field, "must not be empty"));
    }
    for (index, item) in items.into_iter().enumerate() {
        let item_field = format!("{field}[{index}]");
        validate_url(&item_field, &require_string(&item_field, Some(item))?)?;
    }
    Ok(())
}

fn validate_url(field: &str, value: &str) -> Result<(), CallbackError> {
    if value.len() > MAX_URL_BYTES {
        return Err(CallbackError::invalid(
            field,
            format!("must be at most {MAX_URL_BYTES} bytes long"),
        ));
    }
    let url = Url::parse(value).map_err(|error| {
        CallbackError::invalid(field, format!("must be an absolute URL ({error})"))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(CallbackError::invalid(
            field,
            format!("must use http or https, not `{}`", url.scheme()),
        ));
    }
    // The URL parser turns `http:///x` into host `x`, but the text forwarded is the original.
    let authority = value.split_once("://").map(|(_, rest)| rest);
    let names_host = authority.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if !names_host || url.host_str().is_none_or(str::is_empty) {
        return Err(CallbackError::invalid(field, "must name a host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(body: &str) -> (String, String) {
        match Callback::parse(body.as_bytes()) {
            Err(CallbackError::Invalid { field, reason }) => (field, reason),
            other => panic!("expected a validation error for {body}, got {other:?}"),
        }
    }

    fn malformed(body: &[u8]) -> String {
        match Callback::parse(body) {
            Err(CallbackError::Malformed { message, .. }) => message,
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_provider_examples() {
        let examples = [
            r#"{"task_id": "abc123def456", "status": "completed", "data": {"video_url": "https://cdn.example.com/outputs/abc123.mp4"}}"#,
            r#"{"task_id": "b7e1", "status": "completed", "data": {"image_urls": ["https://cdn.example.com/o/1.png", "https://cdn.example.com/o/2.png"], "seed": 42}}"#,
            r#"{"task_id": "c9f0", "status": "failed", "error_message": "Content policy violation"}"#,
        ];
        let statuses = [Status::Completed, Status::Completed, Status::Failed];
        for (body, status) in examples.iter().zip(statuses) {
            let callback = Callback::parse(body.as_bytes()).expect(body);
            assert_eq!(callback.status, status);
        }
    }

    #[test]
    fn unknown_fields_and_huge_numbers_are_skipped() {
        let body = r#"{"task_id":"t","status":"failed","error_message":"x","cost":1e400,
            "big":123456789012345678901234567890,"nested":[[[[{"a":null}]]]]}"#;
        assert!(Callback::parse(body.as_bytes()).is_ok());
    }

    #[test]
    fn syntax_errors_are_malformed() {
        assert_eq!(malformed(b""), "request body is empty");
        assert_eq!(malformed(b"  \n"), "request body contains only whitespace");
        assert!(malformed(b"{\"task_id\": ").contains("EOF"));
        assert!(malformed(b"{} {}").contains("trailing characters"));
        assert!(malformed(b"\xff\xfe").contains("not valid UTF-8"));
        assert!(malformed(b"\xEF\xBB\xBF{}").contains("byte order mark"));
    }

    #[test]
    fn body_must_be_object() {
        assert_eq!(invalid(r#"["t","completed"]"#).0, "body");
        assert_eq!(invalid("42").0, "body");
    }

    #[test]
    fn task_id_rules() {
        let cases = [
            (r#"{"status":"failed","error_message":"x"}"#, "is required"),
            (
                r#"{"task_id":null,"status":"failed","error_message":"x"}"#,
                "must be a string",
            ),
            (
                r#"{"task_id":7,"status":"failed","error_message":"x"}"#,
                "must be a string",
            ),
            (
                r#"{"task_id":"","status":"failed","error_message":"x"}"#,
                "must not be empty",
            ),
            (
                r#"{"task_id":"a b","status":"failed","error_message":"x"}"#,
                "whitespace",
            ),
            (
                r#"{"task_id":"a\u0007","status":"failed","error_message":"x"}"#,
                "control",
            ),
            (
                r#"{"task_id":"a\tb","status":"failed","error_message":"x"}"#,
                "whitespace",
            ),
        ];
        for (body, reason) in cases {
            let (field, message) = invalid(body);
            assert_eq!(field, "task_id", "{body}");
            assert!(message.contains(reason), "{body}: {message}");
        }
    }

    #[test]
    fn task_id_length_counts_characters() {
        let longest = "é".repeat(MAX_TASK_ID_CHARS);
        assert!(TaskId::parse(longest.clone()).is_ok());
        let too_long = format!("{longest}x");
        assert!(TaskId::parse(too_long).is_err());
    }

    #[test]
    fn status_must_be_known() {
        for status in [r#""done""#, r#""COMPLETED""#, "1", "null"] {
            let body = format!(r#"{{"task_id":"t","status":{status},"error_message":"x"}}"#);
            assert_eq!(invalid(&body).0, "status", "{body}");
        }
    }

    #[test]
    fn completed_needs_an_output() {
        let cases = [
            (
                r#"{"task_id":"t","status":"completed"}"#,
                "data",
                "is required",
            ),
            (
                r#"{"task_id":"t","status":"completed","data":[]}"#,
                "data",
                "must be an object",
            ),
            (
                r#"{"task_id":"t","status":"completed","data":{"seed":1}}"#,
                "data",
                "at least one output",
            ),
            (
                r#"{"task_id":"t","status":"completed","data":{"video_url":5}}"#,
                "data.video_url",
                "must be a string",
            ),
            (
                r#"{"task_id":"t","status":"completed","data":{"image_urls":[]}}"#,
                "data.image_urls",
                "must not be empty",
            ),
            (
                r#"{"task_id":"t","status":"completed","data":{"image_urls":"https://a/b"}}"#,
                "data.image_urls",
                "array",
            ),
            (
                r#"{"task_id":"t","status":"completed","data":{"audio_urls":["https://a/b", 3]}}"#,
                "data.audio_urls[1]",
                "must be a string",
            ),
            (
                r#"{"task_id":"t","status":"completed","data":{"video_url":"/relative.mp4"}}"#,
                "data.video_url",
                "absolute URL",
            ),
            (
                r#"{"task_id":"t","status":"completed","data":{"video_url":"ftp://cdn/x.mp4"}}"#,
                "data.video_url",
                "http or https",
            ),
            (
                r#"{"task_id":"t","status":"completed","data":{"image_urls":["https://ok/1","javascript:alert(1)"]}}"#,
                "data.image_urls[1]",
                "http or https",
            ),
        ];
        for (body, field, reason) in cases {
            let (actual_field, message) = invalid(body);
            assert_eq!(actual_field, field, "{body}");
            assert!(message.contains(reason), "{body}: {message}");
        }
    }

    #[test]
    fn null_output_names_its_field() {
        let (field, reason) =
            invalid(r#"{"task_id":"t","status":"completed","data":{"video_url":null}}"#);
        assert_eq!(field, "data.video_url");
        assert_eq!(reason, "must be a string");
    }

    #[test]
    fn url_length_is_capped() {
        let url = format!("https://cdn.example.com/{}", "a".repeat(MAX_URL_BYTES));
        let body =
            format!(r#"{{"task_id":"t","status":"completed","data":{{"video_url":"{url}"}}}}"#);
        let (field, reason) = invalid(&body);
        assert_eq!(field, "data.video_url");
        assert!(reason.contains("at most"), "{reason}");
    }

    #[test]
    fn failed_needs_error_message() {
        let (field, _) = invalid(r#"{"task_id":"t","status":"failed"}"#);
        assert_eq!(field, "error_message");
        let (field, reason) = invalid(r#"{"task_id":"t","status":"failed","error_message":{}}"#);
        assert_eq!(field, "error_message");
        assert_eq!(reason, "must be a string");
    }

    #[test]
    fn invisible_task_id_characters_are_rejected() {
        for id in [
            "a\u{200B}b",
            "a\u{202E}b",
            "\u{FEFF}a",
            "a\u{2066}",
            "a\u{180E}b",
            "a\u{034F}b",
        ] {
            let error = TaskId::parse(id.to_owned()).unwrap_err();
            assert!(error.to_string().contains("invisible"), "{id:?}: {error}");
        }
        assert!(TaskId::parse("tâche-7".to_owned()).is_ok());
    }

    #[test]
    fn url_needs_an_authority() {
        for url in ["http:///x", "https://", "http:/x", "http:x"] {
            let body =
                format!(r#"{{"task_id":"t","status":"completed","data":{{"video_url":"{url}"}}}}"#);
            let (field, _) = invalid(&body);
            assert_eq!(field, "data.video_url", "{url}");
        }
    }
    #[test]
    fn document_rules_apply_before_fields() {
        let duplicate = r#"{"task_id":"a","task_id":"b","status":"failed","error_message":"x"}"#;
        match Callback::parse(duplicate.as_bytes()) {
            Err(CallbackError::Malformed { field, message }) => {
                assert_eq!(field.as_deref(), Some("task_id"));
                assert!(message.contains("duplicate key `task_id`"), "{message}");
            }
            other => panic!("expected a duplicate key error, got {other:?}"),
        }
        let surrogate = r#"{"task_id":"t","status":"failed","error_message":"\udc00"}"#;
        assert!(matches!(
            Callback::parse(surrogate.as_bytes()),
            Err(CallbackError::Malformed { .. })
        ));
        let nested = format!(
            r#"{{"task_id":"t","status":"failed","error_message":"x","z":{}{}}}"#,
            "[".repeat(MAX_NESTING_DEPTH),
            "]".repeat(MAX_NESTING_DEPTH)
        );
        assert_eq!(invalid(&nested).0, "body");
    }
}
