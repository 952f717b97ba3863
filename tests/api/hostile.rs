//! JSON edge cases: each gets its documented 4xx, never a 5xx, and nothing is claimed or
//! published. Numbers beyond 64 bits reach the broker byte for byte.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::helpers::*;

struct Case {
    name: &'static str,
    body: Vec<u8>,
    status: u16,
    error: &'static str,
    field: Option<&'static str>,
    /// A part of the expected `message`.
    message: &'static str,
}

fn case(
    name: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    field: Option<&'static str>,
    message: &'static str,
) -> Case {
    let error = if status == 400 {
        "invalid_json"
    } else {
        "invalid_payload"
    };
    Case {
        name,
        body: body.into(),
        status,
        error,
        field,
        message,
    }
}

fn nested(levels: usize) -> String {
    format!(
        r#"{{"task_id":"t1","status":"failed","error_message":"x","z":{}0{}}}"#,
        "[".repeat(levels),
        "]".repeat(levels)
    )
}

fn cases() -> Vec<Case> {
    let valid = failed_body("t1");
    vec![
        case(
            "duplicate task_id",
            r#"{"task_id":"t1","task_id":"t2","status":"failed","error_message":"x"}"#,
            400,
            Some("task_id"),
            "duplicate key `task_id`",
        ),
        case(
            "duplicate task_id spelled with an escape",
            r#"{"task_id":"t1","status":"failed","error_message":"x","task\u005fid":"t2"}"#,
            400,
            Some("task_id"),
            "duplicate key `task_id`",
        ),
        case(
            "duplicate unknown key inside data",
            r#"{"task_id":"t1","status":"completed","data":{"video_url":"https://a/1.mp4","seed":1,"seed":2}}"#,
            400,
            Some("data.seed"),
            "duplicate key `seed`",
        ),
        case(
            "nesting one level too deep",
            nested(64),
            422,
            Some("body"),
            "deeper than 64 levels",
        ),
        case(
            "nesting 100000 levels deep",
            nested(100_000),
            422,
            Some("body"),
            "deeper than 64 levels",
        ),
        case(
            "invalid UTF-8 in a string",
            b"{\"task_id\":\"t1\",\"status\":\"failed\",\"error_message\":\"caf\xe9\"}".to_vec(),
            400,
            None,
            "not valid UTF-8: invalid byte at offset 54",
        ),
        case(
            "UTF-8 encoded surrogate",
            b"{\"task_id\":\"t1\",\"status\":\"failed\",\"error_message\":\"\xed\xa0\x80\"}"
                .to_vec(),
            400,
            None,
            "not valid UTF-8",
        ),
        case(
            "lone high surrogate escape",
            r#"{"task_id":"t1","status":"failed","error_message":"\ud800"}"#,
            400,
            Some("error_message"),
            "lone UTF-16 surrogate",
        ),
        case(
            "lone low surrogate escape in an output list",
            r#"{"task_id":"t1","status":"completed","data":{"image_urls":["https://a/\udc00.png"]}}"#,
            400,
            Some("data.image_urls[0]"),
            "lone UTF-16 surrogate",
        ),
        case(
            "byte order mark",
            [b"\xEF\xBB\xBF".as_slice(), valid.as_bytes()].concat(),
            400,
            None,
            "byte order mark",
        ),
        case(
            "trailing bytes",
            format!("{valid} x"),
            400,
            None,
            "trailing characters",
        ),
        case("empty body", "", 400, None, "request body is empty"),
        case(
            "whitespace only",
            " \r\n\t ",
            400,
            None,
            "contains only whitespace",
        ),
        case(
            "top-level null",
            "null",
            422,
            Some("body"),
            "must be a JSON object",
        ),
        case(
            "top-level array",
            format!("[{valid}]"),
            422,
            Some("body"),
            "must be a JSON object",
        ),
        case(
            "top-level string",
            r#""t1""#,
            422,
            Some("body"),
            "must be a JSON object",
        ),
        case(
            "top-level number beyond 64 bits",
            "123456789012345678901234567890",
            422,
            Some("body"),
            "must be a JSON object",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_json_gets_documented_answers() {
    let app = spawn_app().await;
    let cases = cases();
    for case in &cases {
        let response = app
            .post_raw(case.body.clone(), Some("application/json"))
            .await;
        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        assert!(
            !response.headers().contains_key("retry-after"),
            "{}: no Retry-After on a 4xx",
            case.name
        );
        let answer = response_json(response).await;
        assert_eq!(answer["status"], "rejected", "{}", case.name);
        assert_eq!(answer["error"], case.error, "{}", case.name);
        assert_eq!(
            answer["field"].as_str(),
            case.field,
            "{}: {answer}",
            case.name
        );
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(case.message),
            "{}: message {message:?} lacks {:?}",
            case.name,
            case.message
        );
    }

    assert!(app.keys().await.is_empty(), "nothing is claimed in Redis");
    assert_eq!(app.drain_all().await, 0, "nothing is published");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for (error, status) in [("invalid_json", 400), ("invalid_payload", 422)] {
        let count = cases.iter().filter(|case| case.status == status).count();
        let series = format!(
            r#"webhook_bridge_requests_total{{outcome="rejected",reason="{error}"}} {count}"#
        );
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
    app.teardown().await;
}

#[derive(Deserialize)]
struct EventData<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_beyond_64_bits_are_forwarded_exactly() {
    let app = spawn_app().await;
    let task_id = unique_task_id();
    // Integers past u64 and i64, a float past f64, digits that f64 would round, and the
    // original spacing, which a decode and re-encode would all change.
    let body = format!(
        "{{\"task_id\": \"{task_id}\",\n  \"status\": \"completed\",\n  \"data\": {{\"video_url\": \"https://cdn.example.com/o/1.mp4\",\n    \"seed\": 123456789012345678901234567890,\n    \"max\": 18446744073709551616, \"min\": -9223372036854775809,\n    \"cost\": 1e400, \"tiny\": -1.0E-400,\n    \"ratio\": 0.100000000000000000000000000000000000001, \"zero\": -0.0}}}}"
    );

    let response = app.post_callback(&body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response_json(response).await["status"], "accepted");

    let received = app.drain(app.completed_queue()).await;
    assert_eq!(received.len(), 1);
    let event: EventData<'_> =
        serde_json::from_slice(&received[0].body).expect("event is JSON with a data field");
    assert_eq!(event.data.get(), body, "data is the body byte for byte");
    app.teardown().await;
}
