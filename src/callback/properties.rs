//! Property tests of the parser and validator against the rules in the README (*How a
//! callback flows* and *Hostile input*). Bodies are built as trees, so that a test can insert a
//! key, a character or a level of nesting at any place and compute the path the error names.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::sample::Index;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::*;
use crate::event::Event;

/// A JSON value as the test writes it.
#[derive(Debug, Clone)]
enum Json {
    /// The text of a string, number, boolean or null.
    Scalar(String),
    Array(Vec<Json>),
    Object(Vec<Member>),
}

#[derive(Debug, Clone)]
struct Member {
    key: String,
    /// Writes every character of the key as a `\u` escape.
    escaped: bool,
    value: Json,
}

impl Member {
    fn new(key: &str, value: Json) -> Self {
        Self {
            key: key.to_owned(),
            escaped: false,
            value,
        }
    }
}

impl Json {
    fn string(text: &str) -> Self {
        Self::Scalar(serde_json::to_string(text).unwrap())
    }

    /// Writes the value with `space` between all tokens.
    fn render(&self, space: &str) -> String {
        let mut out = String::new();
        self.write(space, &mut out);
        out
    }

    fn write(&self, space: &str, out: &mut String) {
        match self {
            Self::Scalar(text) => out.push_str(text),
            Self::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    out.push_str(space);
                    item.write(space, out);
                }
                out.push_str(space);
                out.push(']');
            }
            Self::Object(members) => {
                out.push('{');
                for (index, member) in members.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    out.push_str(space);
                    if member.escaped {
                        out.push_str(&escape_all(&member.key));
                    } else {
                        out.push_str(&serde_json::to_string(&member.key).unwrap());
                    }
                    out.push_str(space);
                    out.push(':');
                    out.push_str(space);
                    member.value.write(space, out);
                }
                out.push_str(space);
                out.push('}');
            }
        }
    }

    /// Lists every object with at least one member, by its path as the errors write it.
    fn object_paths(&self, path: &str, found: &mut Vec<String>) {
        match self {
            Self::Scalar(_) => {}
            Self::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    item.object_paths(&format!("{path}[{index}]"), found);
                }
            }
            Self::Object(members) => {
                if !members.is_empty() {
                    found.push(path.to_owned());
                }
                for member in members {
                    member.value.object_paths(&join(path, &member.key), found);
                }
            }
        }
    }

    /// Returns the members of the object at `path`, as `object_paths` writes it.
    fn object_at(&mut self, path: &str, current: &str) -> Option<&mut Vec<Member>> {
        if current == path {
            return match self {
                Self::Object(members) => Some(members),
                _ => None,
            };
        }
        match self {
            Self::Scalar(_) => None,
            Self::Array(items) => items
                .iter_mut()
                .enumerate()
                .find_map(|(index, item)| item.object_at(path, &format!("{current}[{index}]"))),
            Self::Object(members) => members.iter_mut().find_map(|member| {
                let child = join(current, &member.key);
                member.value.object_at(path, &child)
            }),
        }
    }
}

/// Extends an error path by a key, as `data` and `seed` give `data.seed`.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Writes a string with every UTF-16 code unit as a `\u` escape, surrogate pairs included.
fn escape_all(text: &str) -> String {
    let mut out = String::from('"');
    for unit in text.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

/// A generated callback that follows every rule.
#[derive(Debug, Clone)]
struct Valid {
    task_id: String,
    status: Status,
    body: Json,
    /// JSON whitespace written between all tokens.
    space: String,
}

impl Valid {
    fn text(&self) -> String {
        self.body.render(&self.space)
    }

    fn members(&mut self) -> &mut Vec<Member> {
        match &mut self.body {
            Json::Object(members) => members,
            _ => unreachable!("a callback body is an object"),
        }
    }
}

/// Task ids within the rules: 1 to 256 characters of ASCII, Latin, CJK and emoji, quotes and
/// backslashes included, with no whitespace, control or invisible formatting character.
fn task_id() -> impl Strategy<Value = String> {
    "[!-~\u{A1}-\u{AC}\u{AE}-\u{2FF}\u{4E00}-\u{4E50}\u{1F300}-\u{1F3FF}]{1,256}"
}

/// Absolute `http` and `https` URLs with a host, a path and sometimes a query.
fn url() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("https"), Just("http")],
        // No label has two hyphens in a row, so none is an `xn--` punycode label.
        "[a-z][a-z0-9]{0,7}(-[a-z0-9]{1,7})?(\\.[a-z]{2,6}){1,2}",
        "(:[1-9][0-9]{1,3})?",
        "(/[A-Za-z0-9._~-]{1,12}){0,4}",
        "(\\?[a-z]{1,5}=[A-Za-z0-9%]{0,20})?",
    )
        .prop_map(|(scheme, host, port, path, query)| {
            format!("{scheme}://{host}{port}{path}{query}")
        })
}

/// Scalars as providers send them, including numbers beyond 64 bits and any string.
fn scalar() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Scalar("null".to_owned())),
        any::<bool>().prop_map(|value| Json::Scalar(value.to_string())),
        any::<i64>().prop_map(|value| Json::Scalar(value.to_string())),
        "-?[1-9][0-9]{20,40}".prop_map(Json::Scalar),
        "-?[0-9]\\.[0-9]{1,5}([eE][+-]?[0-9]{1,3})?".prop_map(Json::Scalar),
        any::<String>().prop_map(|text| Json::string(&text)),
    ]
}

/// Object keys that never name an output, because they have no underscore.
fn plain_key() -> impl Strategy<Value = String> {
    "[a-z]{1,10}"
}

/// Objects with unique keys, in any order.
fn object_of(values: impl Strategy<Value = Json>, size: usize) -> impl Strategy<Value = Json> {
    prop::collection::btree_map(plain_key(), values, 0..size)
        .prop_map(members_of)
        .prop_shuffle()
        .prop_map(Json::Object)
}

fn members_of(map: BTreeMap<String, Json>) -> Vec<Member> {
    map.into_iter()
        .map(|(key, value)| Member::new(&key, value))
        .collect()
}

/// Model fields: any JSON value a few levels deep.
fn model_value() -> impl Strategy<Value = Json> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            object_of(inner, 4),
        ]
    })
}

fn single_output() -> impl Strategy<Value = Json> {
    url().prop_map(|url| Json::string(&url))
}

fn list_output() -> impl Strategy<Value = Json> {
    prop::collection::vec(single_output(), 1..4).prop_map(Json::Array)
}

/// Generates a value for each of a non-empty set of output fields.
fn outputs() -> impl Strategy<Value = Vec<Member>> {
    (
        prop::option::of(single_output()),
        prop::option::of(single_output()),
        prop::option::of(single_output()),
        prop::option::of(list_output()),
        prop::option::of(list_output()),
        prop::option::of(list_output()),
    )
        .prop_map(|(video, image, audio, videos, images, audios)| {
            let names = [SINGLE_OUTPUTS, LIST_OUTPUTS].concat();
            names
                .into_iter()
                .zip([video, image, audio, videos, images, audios])
                .filter_map(|(name, value)| value.map(|value| Member::new(name, value)))
                .collect::<Vec<_>>()
        })
        .prop_filter("at least one output", |outputs| !outputs.is_empty())
}

/// Generates a `data` object: outputs mixed with model fields, in any order.
fn data() -> impl Strategy<Value = Json> {
    (
        outputs(),
        prop::collection::btree_map(plain_key(), model_value(), 0..4),
    )
        .prop_map(|(mut members, extra)| {
            members.extend(members_of(extra));
            members
        })
        .prop_shuffle()
        .prop_map(Json::Object)
}

/// The fields of a `completed` callback: a `data` object with outputs.
fn completed_fields() -> impl Strategy<Value = (Status, Vec<Member>)> {
    data().prop_map(|data| (Status::Completed, vec![Member::new("data", data)]))
}

/// The fields of a `failed` callback: a message, and sometimes a `data` value that is not
/// checked.
fn failed_fields() -> impl Strategy<Value = (Status, Vec<Member>)> {
    (any::<String>(), prop::option::of(model_value())).prop_map(|(message, data)| {
        let mut members = vec![Member::new("error_message", Json::string(&message))];
        members.extend(data.map(|data| Member::new("data", data)));
        (Status::Failed, members)
    })
}

/// Callbacks that follow every rule, `completed` or `failed`.
fn valid_callback() -> impl Strategy<Value = Valid> {
    callback_with(prop_oneof![completed_fields(), failed_fields()])
}

/// Builds callbacks from a task id, the status with its `fields`, and model fields at the top
/// level, in any order.
fn callback_with(
    fields: impl Strategy<Value = (Status, Vec<Member>)>,
) -> impl Strategy<Value = Valid> {
    (
        task_id(),
        fields,
        prop::collection::btree_map("[a-z]{1,10}", model_value(), 0..3),
        "[ \t\r\n]{0,2}",
    )
        .prop_flat_map(|(task_id, (status, fields), extra, space)| {
            let mut members = vec![
                Member::new("task_id", Json::string(&task_id)),
                Member::new("status", Json::string(status.as_str())),
            ];
            members.extend(fields);
            let names = ["task_id", "status", "data", "error_message"];
            members.extend(members_of(extra).into_iter().filter(|member| {
                // Plain keys can still spell `status` or `data`.
                !names.contains(&member.key.as_str())
            }));
            (
                Just(task_id),
                Just(status),
                Just(members).prop_shuffle(),
                Just(space),
            )
        })
        .prop_map(|(task_id, status, members, space)| Valid {
            task_id,
            status,
            body: Json::Object(members),
            space,
        })
}

/// The event attributes that the tests read.
#[derive(Deserialize)]
struct EventDocument<'a> {
    id: String,
    subject: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Builds the event for an accepted body and checks that it is one JSON document that
/// carries the body byte for byte.
fn check_event(callback: &Callback, body: &[u8]) -> Result<(), TestCaseError> {
    let time = UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
    let event = Event::new(callback, body, "urn:test", time);
    let document: EventDocument<'_> = serde_json::from_slice(&event.payload)
        .map_err(|error| TestCaseError::fail(format!("event is not JSON: {error}")))?;
    let task_id = callback.task_id.as_str();
    prop_assert_eq!(&document.subject, task_id);
    prop_assert_eq!(
        document.id,
        format!("{task_id}:{}", callback.status.as_str())
    );
    // JSON whitespace around the document is not part of the value.
    prop_assert_eq!(document.data.get().as_bytes(), body.trim_ascii());
    Ok(())
}

/// Returns the field of the validation error (HTTP 422), or fails the case.
fn invalid_field(body: &str) -> Result<String, TestCaseError> {
    match Callback::parse(body.as_bytes()) {
        Err(CallbackError::Invalid { field, .. }) => Ok(field),
        other => Err(TestCaseError::fail(format!(
            "expected a validation error for {body}, got {other:?}"
        ))),
    }
}

/// Characters that a task id must not contain: whitespace, control characters, and the
/// zero-width and bidirectional marks.
fn forbidden_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::char::range('\u{0}', '\u{1F}'),
        prop::char::range('\u{7F}', '\u{9F}'),
        prop::char::range('\u{2000}', '\u{200F}'),
        prop::char::range('\u{2028}', '\u{202F}'),
        prop::char::range('\u{2066}', '\u{2069}'),
        prop::sample::select(vec![
            ' ', '\u{A0}', '\u{1680}', '\u{205F}', '\u{3000}', '\u{FEFF}'
        ]),
    ]
}

/// Wraps `value` in one array or object per entry of `levels` (true for an array).
fn nest(levels: &[bool], value: Json) -> Json {
    levels.iter().rev().fold(value, |inner, &array| {
        if array {
            Json::Array(vec![inner])
        } else {
            Json::Object(vec![Member::new("k", inner)])
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_callback_parses_and_keeps_body(valid in valid_callback(), pad in "[ \t\r\n]{0,2}") {
        let body = format!("{pad}{}{pad}", valid.text());
        let callback = Callback::parse(body.as_bytes())
            .map_err(|error| TestCaseError::fail(format!("{body}: {error:?}")))?;
        prop_assert_eq!(callback.task_id.as_str(), valid.task_id.as_str());
        prop_assert_eq!(callback.status, valid.status);
        check_event(&callback, body.as_bytes())?;
    }

    #[test]
    fn escaped_keys_read_as_plain(mut valid in valid_callback()) {
        for member in valid.members() {
            member.escaped = true;
        }
        let body = valid.text();
        let callback = Callback::parse(body.as_bytes())
            .map_err(|error| TestCaseError::fail(format!("{body}: {error:?}")))?;
        prop_assert_eq!(callback.task_id.as_str(), valid.task_id.as_str());
    }

    #[test]
    fn accepted_mutation_gives_valid_event(
        valid in valid_callback(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut body = valid.text().into_bytes();
        for (index, byte, kind) in edits {
            match kind {
                0 if !body.is_empty() => {
                    let at = index.index(body.len());
                    body[at] = byte;
                }
                1 if !body.is_empty() => {
                    body.remove(index.index(body.len()));
                }
                _ => body.insert(index.index(body.len() + 1), byte),
            }
        }
        if let Ok(callback) = Callback::parse(&body) {
            check_event(&callback, &body)?;
        }
    }

    #[test]
    fn arbitrary_bytes_never_accept_non_objects(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let result = Callback::parse(&body);
        let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
        if first != Some(&b'{') {
            prop_assert!(result.is_err(), "accepted {body:?}");
        }
        if let Ok(callback) = result {
            check_event(&callback, &body)?;
        }
    }

    #[test]
    fn json_text_never_accepts_non_objects(text in "[ {}\\[\\]\":,0-9a-z\\\\.-]{0,200}") {
        let result = Callback::parse(text.as_bytes());
        if !text.trim_start().starts_with('{') {
            prop_assert!(result.is_err(), "accepted {text}");
        }
        if let Ok(callback) = result {
            check_event(&callback, text.as_bytes())?;
        }
    }

    #[test]
    fn non_object_document_is_invalid_body(
        value in prop_oneof![
            scalar(),
            prop::collection::vec(model_value(), 0..4).prop_map(Json::Array),
        ],
        space in "[ \n]{0,2}",
    ) {
        prop_assert_eq!(invalid_field(&value.render(&space))?, "body");
    }

    #[test]
    fn duplicate_key_is_rejected_anywhere(
        mut valid in valid_callback(),
        object in any::<Index>(),
        key in any::<Index>(),
        position in any::<Index>(),
        value in scalar(),
        escaped in any::<bool>(),
    ) {
        let mut paths = Vec::new();
        valid.body.object_paths("", &mut paths);
        let path = paths[object.index(paths.len())].clone();
        let members = valid.body.object_at(&path, "").unwrap();
        let original = &members[key.index(members.len())];
        let duplicate = Member { key: original.key.clone(), escaped, value };
        let name = duplicate.key.clone();
        members.insert(position.index(members.len() + 1), duplicate);

        let body = valid.text();
        match Callback::parse(body.as_bytes()) {
            Err(CallbackError::Malformed { field, message }) => {
                prop_assert_eq!(field, Some(join(&path, &name)));
                prop_assert!(message.contains("duplicate key"), "{message}");
            }
            other => prop_assert!(false, "expected a duplicate key error for {body}, got {other:?}"),
        }
    }

    #[test]
    fn nesting_beyond_limit_is_rejected(
        mut valid in valid_callback(),
        levels in prop::collection::vec(any::<bool>(), 50..80),
        in_data in any::<bool>(),
    ) {
        // The root object is one level, and `data` another.
        let mut depth = 1 + levels.len();
        let nested = Member::new("deep", nest(&levels, Json::Scalar("0".to_owned())));
        let data = valid.members().iter_mut().find(|member| member.key == "data");
        match data.map(|member| &mut member.value) {
            Some(Json::Object(members)) if in_data => {
                members.push(nested);
                depth += 1;
            }
            _ => valid.members().push(nested),
        }

        let body = valid.text();
        if depth <= MAX_NESTING_DEPTH {
            let callback = Callback::parse(body.as_bytes())
                .map_err(|error| TestCaseError::fail(format!("depth {depth}: {error:?}")))?;
            check_event(&callback, body.as_bytes())?;
        } else {
            prop_assert_eq!(invalid_field(&body)?, "body");
        }
    }

    #[test]
    fn task_id_with_forbidden_char_is_rejected(
        mut valid in valid_callback(),
        bad in forbidden_char(),
        position in any::<Index>(),
        escaped in any::<bool>(),
    ) {
        let mut chars: Vec<char> = valid.task_id.chars().take(MAX_TASK_ID_CHARS - 1).collect();
        chars.insert(position.index(chars.len() + 1), bad);
        let task_id: String = chars.into_iter().collect();
        let text = if escaped { escape_all(&task_id) } else { serde_json::to_string(&task_id).unwrap() };
        let member = valid.members().iter_mut().find(|member| member.key == "task_id").unwrap();
        member.value = Json::Scalar(text);
        prop_assert_eq!(invalid_field(&valid.text())?, "task_id");
    }

    #[test]
    fn task_id_beyond_max_length_is_rejected(mut valid in valid_callback(), extra in task_id()) {
        let task_id = format!("{}{extra}", "x".repeat(MAX_TASK_ID_CHARS));
        let member = valid.members().iter_mut().find(|member| member.key == "task_id").unwrap();
        member.value = Json::string(&task_id);
        prop_assert_eq!(invalid_field(&valid.text())?, "task_id");
    }

    #[test]
    fn unknown_status_is_rejected(mut valid in valid_callback(), status in any::<String>()) {
        prop_assume!(status != "completed" && status != "failed");
        let member = valid.members().iter_mut().find(|member| member.key == "status").unwrap();
        member.value = Json::string(&status);
        prop_assert_eq!(invalid_field(&valid.text())?, "status");
    }

    #[test]
    fn output_without_http_scheme_names_its_field(
        mut valid in callback_with(completed_fields()),
        output in any::<Index>(),
        item in any::<Index>(),
        bad in prop_oneof![
            Just("ftp://cdn.example.com/x.mp4".to_owned()),
            Just("javascript:alert(1)".to_owned()),
            Just("/relative/x.png".to_owned()),
            Just("https:///x.png".to_owned()),
            "file:///[a-z]{1,8}",
        ],
    ) {
        let data = valid.members().iter_mut().find(|member| member.key == "data").unwrap();
        let Json::Object(members) = &mut data.value else { unreachable!("data is an object") };
        let outputs: Vec<&mut Member> = members
            .iter_mut()
            .filter(|member| [SINGLE_OUTPUTS, LIST_OUTPUTS].concat().contains(&member.key.as_str()))
            .collect();
        let count = outputs.len();
        let member = outputs.into_iter().nth(output.index(count)).unwrap();
        let field = match &mut member.value {
            Json::Array(urls) => {
                let at = item.index(urls.len());
                urls[at] = Json::string(&bad);
                format!("data.{}[{at}]", member.key)
            }
            value => {
                *value = Json::string(&bad);
                format!("data.{}", member.key)
            }
        };
        prop_assert_eq!(invalid_field(&valid.text())?, field);
    }
}
