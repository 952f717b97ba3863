//! Rules for the request body as a JSON text, checked before any field is read. The body is
//! one UTF-8 document without a byte order mark. Every object has unique keys, no string has
//! a `\u` escape of a lone UTF-16 surrogate, and nesting stops at [`MAX_NESTING_DEPTH`]
//! levels. These are the rules of I-JSON (RFC 7493) plus a depth limit, so that every
//! consumer decodes the forwarded event the same way.

use std::borrow::Cow;
use std::collections::HashSet;

use serde_json::value::RawValue;

use super::CallbackError;

/// Deepest nesting of arrays and objects accepted. The event adds one level around the
/// callback, and serde_json stops at 128 levels by default, so consumers can read every event.
pub const MAX_NESTING_DEPTH: usize = 64;

/// The UTF-8 encoding of U+FEFF. RFC 8259 forbids it at the start of JSON sent over a network.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// Returns the whole body as one JSON value, borrowed from `body`.
pub fn parse_document(body: &[u8]) -> Result<&RawValue, CallbackError> {
    if body.is_empty() {
        return Err(CallbackError::malformed("request body is empty"));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(CallbackError::malformed(
            "request body contains only whitespace",
        ));
    }
    if body.starts_with(BYTE_ORDER_MARK) {
        return Err(CallbackError::malformed(
            "request body starts with a UTF-8 byte order mark; send the JSON without it",
        ));
    }
    let text = std::str::from_utf8(body).map_err(|error| {
        CallbackError::malformed(format!(
            "request body is not valid UTF-8: invalid byte at offset {}",
            error.valid_up_to()
        ))
    })?;
    serde_json::from_str(text).map_err(|error| {
        CallbackError::malformed(format!("request body is not valid JSON: {error}"))
    })
}

/// An array or object that the scan is inside.
enum Frame<'a> {
    Object {
        /// Decoded keys seen so far in this object.
        keys: HashSet<Cow<'a, str>>,
        /// The last key seen, whose value the scan is in unless `expecting_key`.
        key: Option<Cow<'a, str>>,
        /// True between `{` or `,` and the next key.
        expecting_key: bool,
    },
    Array {
        index: usize,
    },
}

/// Rejects what consumers could not decode the same way although serde_json accepted the
/// syntax: duplicate keys, lone surrogate escapes (serde_json and most strict decoders reject
/// them when they decode the string) and nesting deeper than [`MAX_NESTING_DEPTH`]. `json`
/// must be one valid JSON document, as [`parse_document`] returns.
pub fn check_structure(json: &str) -> Result<(), CallbackError> {
    let bytes = json.as_bytes();
    let mut frames: Vec<Frame<'_>> = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'{' | b'[' => {
                if frames.len() == MAX_NESTING_DEPTH {
                    return Err(CallbackError::invalid(
                        "body",
                        format!(
                            "must not nest arrays and objects deeper than {MAX_NESTING_DEPTH} levels"
                        ),
                    ));
                }
                frames.push(if bytes[index] == b'{' {
                    Frame::Object {
                        keys: HashSet::new(),
                        key: None,
                        expecting_key: true,
                    }
                } else {
                    Frame::Array { index: 0 }
                });
            }
            b'}' | b']' => {
                frames.pop();
            }
            b',' => match frames.last_mut() {
                Some(Frame::Object { expecting_key, .. }) => *expecting_key = true,
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { expecting_key, .. }) = frames.last_mut() {
                    *expecting_key = false;
                }
            }
            b'"' => {
                let end =
                    scan_string(bytes, index + 1).map_err(|()| lone_surrogate_error(&frames))?;
                if let Some(Frame::Object {
                    keys,
                    key,
                    expecting_key: true,
                }) = frames.last_mut()
                {
                    let name = decode_key(&json[index..=end])?;
                    if !keys.insert(name.clone()) {
                        return Err(duplicate_key_error(&frames, &name));
                    }
                    *key = Some(name);
                }
                index = end;
            }
            _ => {}
        }
        index += 1;
    }
    Ok(())
}

/// Finds the closing quote of the string whose content starts at `start`, and fails on a
/// `\u` escape of a lone UTF-16 surrogate.
fn scan_string(bytes: &[u8], start: usize) -> Result<usize, ()> {
    let mut index = start;
    loop {
        match bytes[index] {
            b'"' => return Ok(index),
            b'\\' if bytes[index + 1] == b'u' => {
                let unit = hex_unit(&bytes[index + 2..index + 6]);
                index += 6;
                let lone = match unit {
                    0xD800..=0xDBFF => {
                        let next = bytes.get(index..index + 6);
                        let paired = next.is_some_and(|escape| {
                            escape.starts_with(b"\\u")
                                && (0xDC00..=0xDFFF).contains(&hex_unit(&escape[2..]))
                        });
                        if paired {
                            index += 6;
                        }
                        !paired
                    }
                    0xDC00..=0xDFFF => true,
                    _ => false,
                };
                if lone {
                    return Err(());
                }
            }
            b'\\' => index += 2,
            _ => index += 1,
        }
    }
}

/// Decodes four hex digits of a `\u` escape that the JSON parser already checked.
fn hex_unit(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |unit, digit| {
        unit * 16 + char::from(*digit).to_digit(16).unwrap_or(0)
    })
}

/// Decodes a key given with its quotes, so that `"a"` and `"\u0061"` count as the same key.
fn decode_key(quoted: &str) -> Result<Cow<'_, str>, CallbackError> {
    let raw = &quoted[1..quoted.len() - 1];
    if !raw.contains('\\') {
        return Ok(Cow::Borrowed(raw));
    }
    serde_json::from_str::<String>(quoted)
        .map(Cow::Owned)
        .map_err(|error| {
            CallbackError::malformed(format!("request body is not valid JSON: {error}"))
        })
}

/// Returns the path of the value the scan is in, such as `data.image_urls[1]`, or `body`
/// for the top level.
fn current_path(frames: &[Frame<'_>]) -> String {
    let mut path = String::new();
    for frame in frames {
        match frame {
            Frame::Object {
                key: Some(key),
                expecting_key: false,
                ..
            } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Object { .. } => {}
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    if path.is_empty() {
        path.push_str("body");
    }
    path
}

fn duplicate_key_error(frames: &[Frame<'_>], name: &str) -> CallbackError {
    let field = match current_path(frames).as_str() {
        "body" => name.to_owned(),
        parent => format!("{parent}.{name}"),
    };
    CallbackError::Malformed {
        field: Some(field),
        message: format!("duplicate key `{name}`; each key of an object must appear once"),
    }
}

fn lone_surrogate_error(frames: &[Frame<'_>]) -> CallbackError {
    CallbackError::Malformed {
        field: Some(current_path(frames)),
        message: "string contains a \\u escape of a lone UTF-16 surrogate (\\uD800 to \\uDFFF)"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the field and message of the 400 response for `body`.
    fn malformed(body: &[u8]) -> (Option<String>, String) {
        let result = parse_document(body).and_then(|document| check_structure(document.get()));
        match result {
            Err(CallbackError::Malformed { field, message }) => (field, message),
            other => panic!("expected invalid JSON for {body:?}, got {other:?}"),
        }
    }

    fn check(json: &str) -> Result<(), CallbackError> {
        check_structure(json)
    }

    #[test]
    fn empty_and_blank_bodies_are_named() {
        assert_eq!(malformed(b"").1, "request body is empty");
        assert_eq!(
            malformed(b" \r\n\t").1,
            "request body contains only whitespace"
        );
    }

    #[test]
    fn byte_order_mark_is_rejected() {
        let (field, message) = malformed(b"\xEF\xBB\xBF{\"a\":1}");
        assert_eq!(field, None);
        assert!(message.contains("byte order mark"), "{message}");
    }

    #[test]
    fn invalid_utf8_gives_offset() {
        let cases: [(&[u8], usize); 4] = [
            (b"{\"a\":\"\xff\"}", 6),
            // An overlong encoding of `/`.
            (b"{\"a\":\"\xc0\xaf\"}", 6),
            // A UTF-16 surrogate encoded as UTF-8 (CESU-8).
            (b"{\"a\":\"\xed\xa0\x80\"}", 6),
            (b"{\"a\":\"x\xe2\x82\"}", 7),
        ];
        for (body, offset) in cases {
            let (field, message) = malformed(body);
            assert_eq!(field, None);
            assert_eq!(
                message,
                format!("request body is not valid UTF-8: invalid byte at offset {offset}")
            );
        }
    }

    #[test]
    fn syntax_errors_keep_the_parser_message() {
        assert!(malformed(b"{\"task_id\": ").1.contains("EOF"));
        assert!(malformed(b"{} {}").1.contains("trailing characters"));
        assert!(malformed(b"{}x").1.contains("trailing characters"));
        assert!(malformed(b"\x00{}").1.contains("expected value"));
    }

    #[test]
    fn duplicate_keys_are_named_by_path() {
        let cases = [
            (r#"{"task_id":"a","task_id":"b"}"#, "task_id"),
            (r#"{"data":{"seed":1,"x":[],"seed":2}}"#, "data.seed"),
            (r#"{"a":[{"k":1},{"k":1,"k":2}]}"#, "a[1].k"),
            (r#"{"task\u005fid":"a","task_id":"b"}"#, "task_id"),
            (r#"{"":1,"":2}"#, ""),
        ];
        for (json, field) in cases {
            match check(json) {
                Err(CallbackError::Malformed {
                    field: Some(actual),
                    message,
                }) => {
                    assert_eq!(actual, field, "{json}");
                    assert!(message.starts_with("duplicate key `"), "{json}: {message}");
                }
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn equal_keys_in_different_objects_pass() {
        let json = r#"{"a":{"k":1},"b":{"k":1},"c":[{"k":1},{"k":2}],"k":"a:b,c","d":"k"}"#;
        assert!(check(json).is_ok());
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let nested =
            |levels: usize| format!(r#"{{"z":{}1{}}}"#, "[".repeat(levels), "]".repeat(levels));
        assert!(check(&nested(MAX_NESTING_DEPTH - 1)).is_ok());
        match check(&nested(MAX_NESTING_DEPTH)) {
            Err(CallbackError::Invalid { field, reason }) => {
                assert_eq!(field, "body");
                assert!(reason.contains("deeper than 64 levels"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let deepest = nested(100_000);
        let document = parse_document(deepest.as_bytes()).unwrap();
        assert!(matches!(
            check(document.get()),
            Err(CallbackError::Invalid { .. })
        ));
    }

    #[test]
    fn brackets_inside_strings_do_not_nest() {
        let json = format!(
            r#"{{"a":"{}\"{}","{}":1}}"#,
            "[".repeat(200),
            "{".repeat(200),
            "[".repeat(100)
        );
        assert!(check(&json).is_ok());
    }

    #[test]
    fn lone_surrogates_are_named_by_path() {
        for escape in [
            r"\udc00",
            r"\ud800",
            r"\ud800x",
            r"\ud800\u0041",
            r"\uDBFF\uDBFF",
        ] {
            let json = format!(r#"{{"task_id":"t","data":{{"urls":["ok","{escape}"]}}}}"#);
            match check(&json) {
                Err(CallbackError::Malformed { field, message }) => {
                    assert_eq!(field.as_deref(), Some("data.urls[1]"), "{escape}");
                    assert!(
                        message.contains("lone UTF-16 surrogate"),
                        "{escape}: {message}"
                    );
                }
                other => panic!("{escape}: {other:?}"),
            }
        }
        let in_key = check(r#"{"data":{"\ud800":1}}"#);
        assert!(
            matches!(&in_key, Err(CallbackError::Malformed { field: Some(field), .. }) if field == "data"),
            "{in_key:?}"
        );
        let top_level = check(r#""\udc00""#);
        assert!(
            matches!(&top_level, Err(CallbackError::Malformed { field: Some(field), .. }) if field == "body"),
            "{top_level:?}"
        );
    }

    #[test]
    fn paired_surrogates_and_escapes_pass() {
        let json = r#"{"a":"\ud83d\ude00 \\u0041 \\\"","z":"\u00e9\\","\"k\\":1,"\"k":2}"#;
        assert!(check(json).is_ok());
    }
}
