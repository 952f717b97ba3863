//! The two layouts of the log lines on stderr (`log.format`): `text` for people and `json`
//! for log collectors, one record per line. Both write the record's key-value fields
//! (`task_id`, `event_type`, `cause`, ...), so the same ids can be searched in either layout.

use std::fmt::Display;
use std::io::{self, Write};

use env_logger::fmt::style::Style;
use log::Record;
use log::kv::{self, Key, Value, VisitSource, VisitValue};
use serde::Serializer;

use crate::config::LogFormat;

/// Keys that every JSON line starts with. A field with one of these names gets the prefix
/// `field_`, so that it cannot hide the record's own value.
const RESERVED_KEYS: [&str; 4] = ["time", "level", "target", "message"];

/// Indentation of the continuation lines of a multi-line message in the text layout, the
/// same as env_logger's default layout.
const TEXT_INDENT: &str = "\n    ";

/// Targets whose trace records can hold credentials: lapin traces every AMQP frame it sends,
/// and the connection's StartOk frame carries the user and password as bytes.
const CREDENTIAL_TRACING_TARGETS: [&str; 2] = ["lapin", "amq_protocol"];

/// Returns whether `record` is dropped whatever the `RUST_LOG` filter allows, because it may
/// carry a secret that no redaction can recognise.
pub fn is_withheld(record: &Record<'_>) -> bool {
    record.level() == log::Level::Trace
        && CREDENTIAL_TRACING_TARGETS.iter().any(|crate_name| {
            record
                .target()
                .strip_prefix(crate_name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

/// Sets `builder` to write each record in `format`, except the records that
/// [`is_withheld`] drops.
pub fn set_format(builder: &mut env_logger::Builder, format: LogFormat) {
    match format {
        LogFormat::Text => builder.format(|buf, record| {
            if is_withheld(record) {
                return Ok(());
            }
            let time = buf.timestamp_seconds();
            let level_style = buf.default_level_style(record.level());
            write_text(buf, time, level_style, record)
        }),
        LogFormat::Json => builder.format(|buf, record| {
            if is_withheld(record) {
                return Ok(());
            }
            let time = buf.timestamp_millis();
            write_json(buf, time, record)
        }),
    };
}

/// Writes `record` as `[time LEVEL target] message key=value key=value`, with the level in
/// `level_style` (no style when the output is not a terminal).
pub fn write_text(
    out: &mut dyn Write,
    time: impl Display,
    level_style: Style,
    record: &Record<'_>,
) -> io::Result<()> {
    let level = record.level();
    write!(
        out,
        "[{time} {level_style}{level:<5}{level_style:#} {}] ",
        record.target()
    )?;
    let message = record.args().to_string();
    out.write_all(message.replace('\n', TEXT_INDENT).as_bytes())?;

    record
        .key_values()
        .visit(&mut TextFields(out))
        .map_err(io::Error::other)?;
    out.write_all(b"\n")
}

/// Writes `record` as one JSON object on one line: `time` (RFC 3339), `level`, `target`,
/// `message`, then each field as a key of its own. Numbers and booleans stay JSON numbers
/// and booleans, and every other value is written as a string of its `Display` output.
pub fn write_json(out: &mut dyn Write, time: impl Display, record: &Record<'_>) -> io::Result<()> {
    out.write_all(b"{\"time\":")?;
    write_json_string(out, &time)?;
    out.write_all(b",\"level\":")?;
    write_json_string(out, &record.level())?;
    out.write_all(b",\"target\":")?;
    write_json_string(out, &record.target())?;
    out.write_all(b",\"message\":")?;
    write_json_string(out, record.args())?;

    record
        .key_values()
        .visit(&mut JsonFields(out))
        .map_err(io::Error::other)?;
    out.write_all(b"}\n")
}

/// Writes `value` as a JSON string. serde_json escapes quotes, backslashes and the control
/// characters below U+0020, so a value cannot break the line or the object, and
/// [`ControlEscapes`] escapes the remaining ones.
fn write_json_string(out: &mut dyn Write, value: &dyn Display) -> io::Result<()> {
    let mut serializer = serde_json::Serializer::with_formatter(out, ControlEscapes);
    (&mut serializer).collect_str(value)?;
    Ok(())
}

/// Compact JSON that also escapes DEL and the C1 control characters (U+007F to U+009F),
/// which JSON allows raw but which a terminal showing the log may act on.
struct ControlEscapes;

impl serde_json::ser::Formatter for ControlEscapes {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (index, character) in fragment.char_indices() {
            if character.is_control() {
                writer.write_all(&fragment.as_bytes()[start..index])?;
                write!(writer, "\\u{:04x}", u32::from(character))?;
                start = index + character.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

fn write_json_number(out: &mut dyn Write, value: impl serde::Serialize) -> Result<(), kv::Error> {
    serde_json::to_writer(out, &value).map_err(io::Error::from)?;
    Ok(())
}

struct TextFields<'a>(&'a mut dyn Write);

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        // A value with a line break, such as a broker's error text, is indented like a
        // multi-line message, so that it cannot pass for a log line of its own.
        let value = value.to_string();
        if value.contains('\n') {
            write!(self.0, " {key}={}", value.replace('\n', TEXT_INDENT))?;
        } else {
            write!(self.0, " {key}={value}")?;
        }
        Ok(())
    }
}

struct JsonFields<'a>(&'a mut dyn Write);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        self.0.write_all(b",")?;
        if RESERVED_KEYS.contains(&key.as_str()) {
            write_json_string(self.0, &format_args!("field_{key}"))?;
        } else {
            write_json_string(self.0, &key)?;
        }
        self.0.write_all(b":")?;
        value.visit(JsonValue(self.0))
    }
}

struct JsonValue<'a>(&'a mut dyn Write);

impl<'kvs> VisitValue<'kvs> for JsonValue<'_> {
    fn visit_any(&mut self, value: Value<'_>) -> Result<(), kv::Error> {
        write_json_string(self.0, &value)?;
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), kv::Error> {
        self.0.write_all(b"null")?;
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), kv::Error> {
        write_json_number(self.0, value)
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), kv::Error> {
        write_json_number(self.0, value)
    }

    fn visit_u128(&mut self, value: u128) -> Result<(), kv::Error> {
        write_json_number(self.0, value)
    }

    fn visit_i128(&mut self, value: i128) -> Result<(), kv::Error> {
        write_json_number(self.0, value)
    }

    fn visit_f64(&mut self, value: f64) -> Result<(), kv::Error> {
        // JSON has no NaN or infinity, so these stay readable as strings.
        if value.is_finite() {
            write_json_number(self.0, value)
        } else {
            write_json_string(self.0, &value)?;
            Ok(())
        }
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), kv::Error> {
        self.0.write_all(if value { b"true" } else { b"false" })?;
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), kv::Error> {
        write_json_string(self.0, &value)?;
        Ok(())
    }

    fn visit_char(&mut self, value: char) -> Result<(), kv::Error> {
        write_json_string(self.0, &value)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use log::Level;
    use serde_json::{Value as Json, json};

    use super::*;

    const TIME: &str = "2026-03-01T12:34:56.789Z";

    /// Formats a record that carries `fields` with `format`.
    fn format_with(
        format: impl Fn(&mut Vec<u8>, &Record<'_>) -> io::Result<()>,
        level: Level,
        message: std::fmt::Arguments<'_>,
        fields: &[(&str, Value<'_>)],
    ) -> String {
        let record = Record::builder()
            .level(level)
            .target("webhook_bridge::routes::webhook")
            .args(message)
            .key_values(&fields)
            .build();
        let mut out = Vec::new();
        format(&mut out, &record).expect("formatting succeeds");
        String::from_utf8(out).expect("UTF-8 output")
    }

    fn json_line(message: std::fmt::Arguments<'_>, fields: &[(&str, Value<'_>)]) -> String {
        format_with(
            |out, record| write_json(out, TIME, record),
            Level::Error,
            message,
            fields,
        )
    }

    fn text_line(message: std::fmt::Arguments<'_>, fields: &[(&str, Value<'_>)]) -> String {
        format_with(
            |out, record| write_text(out, TIME, Style::new(), record),
            Level::Warn,
            message,
            fields,
        )
    }

    fn parse_line(line: &str) -> Json {
        assert!(line.ends_with('\n'), "{line:?}");
        let body = &line[..line.len() - 1];
        assert!(!body.contains('\n'), "one line per record: {line:?}");
        serde_json::from_str(body).unwrap_or_else(|error| panic!("{error}: {line:?}"))
    }

    #[test]
    fn json_has_record_and_fields() {
        let cause = "broker connection is down";
        let line = json_line(
            format_args!("Answering 503: callback not forwarded."),
            &[
                ("task_id", Value::from("abc123")),
                ("event_type", Value::from("task.completed")),
                ("retriable", Value::from(true)),
                ("attempt", Value::from(3_u32)),
                ("offset", Value::from(-2_i64)),
                ("cause", Value::from_display(&cause)),
            ],
        );

        let object = parse_line(&line);
        assert_eq!(object["time"], TIME);
        assert_eq!(object["level"], "ERROR");
        assert_eq!(object["target"], "webhook_bridge::routes::webhook");
        assert_eq!(object["message"], "Answering 503: callback not forwarded.");
        assert_eq!(object["task_id"], "abc123");
        assert_eq!(object["event_type"], "task.completed");
        assert_eq!(object["retriable"], true);
        assert_eq!(object["attempt"], 3);
        assert_eq!(object["offset"], -2);
        assert_eq!(object["cause"], cause);
        assert_eq!(
            object.as_object().unwrap().len(),
            10,
            "no other keys: {object}"
        );
    }

    #[test]
    fn json_escapes_quotes_newlines_and_control_characters() {
        let hostile = "a \"quoted\" \\ value\nsecond line\r\t\u{0}\u{1b}[31m\u{7f}\u{9b} é ✓";
        let line = json_line(
            format_args!("message with {hostile}"),
            &[
                ("cause", Value::from_display(&hostile)),
                ("task_id", Value::from(hostile)),
            ],
        );
        let object = parse_line(&line);
        assert_eq!(object["message"], format!("message with {hostile}"));
        assert_eq!(object["cause"], hostile);
        assert_eq!(object["task_id"], hostile);
        assert!(
            !line[..line.len() - 1].chars().any(char::is_control),
            "control characters are escaped: {line:?}"
        );
    }

    #[test]
    fn json_keeps_record_keys_from_fields() {
        let line = json_line(
            format_args!("the record's message"),
            &[
                ("message", Value::from("a field")),
                ("level", Value::from(1_u8)),
            ],
        );
        let object = parse_line(&line);
        assert_eq!(object["message"], "the record's message");
        assert_eq!(object["level"], "ERROR");
        assert_eq!(object["field_message"], "a field");
        assert_eq!(object["field_level"], 1);
    }

    #[test]
    fn json_writes_non_finite_numbers_as_strings() {
        let line = json_line(
            format_args!("ratio"),
            &[
                ("finite", Value::from(0.5_f64)),
                ("nan", Value::from(f64::NAN)),
                ("big", Value::from(u128::MAX)),
            ],
        );
        let object = parse_line(&line);
        assert_eq!(object["finite"], json!(0.5));
        assert_eq!(object["nan"], "NaN");
        // serde_json reads a number this large back as a float, so the text is compared.
        assert!(
            line.contains(&format!(",\"big\":{}}}", u128::MAX)),
            "{line}"
        );
    }

    #[test]
    fn json_without_fields_is_valid() {
        let object = parse_line(&json_line(format_args!("Stopped."), &[]));
        assert_eq!(object["message"], "Stopped.");
        assert_eq!(object.as_object().unwrap().len(), 4);
    }

    #[test]
    fn text_appends_fields_after_message() {
        let cause = "timed out";
        let line = text_line(
            format_args!("Answering 503: callback not forwarded."),
            &[
                ("task_id", Value::from("abc123")),
                ("retriable", Value::from(false)),
                ("cause", Value::from_display(&cause)),
            ],
        );
        assert_eq!(
            line,
            format!(
                "[{TIME} WARN  webhook_bridge::routes::webhook] Answering 503: callback not forwarded. task_id=abc123 retriable=false cause=timed out\n"
            )
        );
    }

    #[test]
    fn text_indents_continuation_lines() {
        let line = text_line(format_args!("first\nsecond"), &[]);
        assert!(line.ends_with("] first\n    second\n"), "{line:?}");
    }

    #[test]
    fn amqp_frame_traces_are_withheld() {
        let withheld = |level, target| {
            is_withheld(
                &Record::builder()
                    .level(level)
                    .target(target)
                    .args(format_args!("frame"))
                    .build(),
            )
        };
        assert!(withheld(Level::Trace, "lapin::io_loop"));
        assert!(withheld(Level::Trace, "lapin"));
        assert!(withheld(Level::Trace, "amq_protocol::frame"));
        assert!(!withheld(Level::Debug, "lapin::io_loop"));
        assert!(!withheld(Level::Trace, "lapinx"));
        assert!(!withheld(Level::Trace, "webhook_bridge::publisher"));
    }

    #[test]
    fn text_indents_line_breaks_in_fields() {
        let cause = "refused\n[2026-12-04T00:00:00Z ERROR forged] line";
        let line = text_line(
            format_args!("Publish failed."),
            &[("cause", Value::from_display(&cause))],
        );
        assert!(
            line.ends_with("cause=refused\n    [2026-12-04T00:00:00Z ERROR forged] line\n"),
            "{line:?}"
        );
    }
}
