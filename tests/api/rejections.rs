//! Every rejected request gets a precise 4xx, publishes nothing and leaves no Redis key.

use futures_util::stream;

use crate::helpers::*;

struct Case {
    name: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    status: u16,
    error: &'static str,
    field: Option<&'static str>,
}

fn case(
    name: &'static str,
    body: &str,
    status: u16,
    error: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        name,
        body: body.as_bytes().to_vec(),
        content_type: Some("application/json"),
        status,
        error,
        field,
    }
}

fn cases() -> Vec<Case> {
    let long_id = "x".repeat(257);
    let long_id_body =
        format!(r#"{{"task_id":"{long_id}","status":"failed","error_message":"x"}}"#);
    let mut cases = vec![
        case("empty body", "", 400, "invalid_json", None),
        case("not JSON", "task_id=1", 400, "invalid_json", None),
        case(
            "truncated",
            r#"{"task_id":"t1","status":"#,
            400,
            "invalid_json",
            None,
        ),
        case(
            "trailing bytes",
            r#"{"task_id":"t1","status":"failed","error_message":"x"} x"#,
            400,
            "invalid_json",
            None,
        ),
        case(
            "two documents",
            r#"{"task_id":"t1","status":"failed","error_message":"x"}{}"#,
            400,
            "invalid_json",
            None,
        ),
        case(
            "array",
            r#"[{"task_id":"t1"}]"#,
            422,
            "invalid_payload",
            Some("body"),
        ),
        case(
            "missing task_id",
            r#"{"status":"failed","error_message":"x"}"#,
            422,
            "invalid_payload",
            Some("task_id"),
        ),
        case(
            "numeric task_id",
            r#"{"task_id":12,"status":"failed","error_message":"x"}"#,
            422,
            "invalid_payload",
            Some("task_id"),
        ),
        case(
            "task_id with space",
            r#"{"task_id":"a b","status":"failed","error_message":"x"}"#,
            422,
            "invalid_payload",
            Some("task_id"),
        ),
        case(
            "unknown status",
            r#"{"task_id":"t1","status":"running"}"#,
            422,
            "invalid_payload",
            Some("status"),
        ),
        case(
            "completed without data",
            r#"{"task_id":"t1","status":"completed"}"#,
            422,
            "invalid_payload",
            Some("data"),
        ),
        case(
            "completed without output",
            r#"{"task_id":"t1","status":"completed","data":{"seed":1}}"#,
            422,
            "invalid_payload",
            Some("data"),
        ),
        case(
            "relative URL",
            r#"{"task_id":"t1","status":"completed","data":{"video_url":"outputs/1.mp4"}}"#,
            422,
            "invalid_payload",
            Some("data.video_url"),
        ),
        case(
            "empty URL list",
            r#"{"task_id":"t1","status":"completed","data":{"audio_urls":[]}}"#,
            422,
            "invalid_payload",
            Some("data.audio_urls"),
        ),
        case(
            "bad URL in list",
            r#"{"task_id":"t1","status":"completed","data":{"image_urls":["https://a/1.png","file:///etc/passwd"]}}"#,
            422,
            "invalid_payload",
            Some("data.image_urls[1]"),
        ),
        case(
            "failed without message",
            r#"{"task_id":"t1","status":"failed"}"#,
            422,
            "invalid_payload",
            Some("error_message"),
        ),
        case(
            "long task_id",
            &long_id_body,
            422,
            "invalid_payload",
            Some("task_id"),
        ),
        case(
            "deep nesting",
            &format!(
                r#"{{"task_id":"t1","status":"failed","error_message":"x","z":{}{}}}"#,
                "[".repeat(1000),
                "]".repeat(1000)
            ),
            422,
            "invalid_payload",
            Some("body"),
        ),
        case(
            "lone surrogate",
            r#"{"task_id":"t1","status":"failed","error_message":"\udc00"}"#,
            400,
            "invalid_json",
            Some("error_message"),
        ),
        case(
            "byte order mark",
            "\u{FEFF}{\"task_id\":\"t1\",\"status\":\"failed\",\"error_message\":\"x\"}",
            400,
            "invalid_json",
            None,
        ),
    ];
    let valid = failed_body("t1");
    let media_types = [
        ("text/plain", Some("text/plain")),
        ("no content type", None),
        ("latin1 charset", Some("application/json; charset=latin1")),
        ("form", Some("application/x-www-form-urlencoded")),
        ("not a media type", Some("json")),
    ];
    for (name, content_type) in media_types {
        cases.push(Case {
            content_type,
            ..case(
                name,
                &valid,
                415,
                "unsupported_media_type",
                Some("Content-Type"),
            )
        });
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_leave_no_trace() {
    let app = spawn_app().await;
    for case in cases() {
        let response = app.post_raw(case.body.clone(), case.content_type).await;
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
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|message| !message.is_empty()),
            "{}: a reason is given",
            case.name
        );
    }

    assert!(
        app.keys().await.is_empty(),
        "no dedup key for rejected requests"
    );
    assert_eq!(
        app.drain_all().await,
        0,
        "nothing published for rejected requests"
    );
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413() {
    let app = spawn_app_with(|settings| settings.server.max_body_bytes = 1024).await;
    let padding = "p".repeat(2000);
    let body = format!(
        r#"{{"task_id":"big","status":"failed","error_message":"x","padding":"{padding}"}}"#
    );

    let declared = app.post_callback(&body).await;
    assert_eq!(declared.status(), 413);
    assert_eq!(response_json(declared).await["error"], "payload_too_large");

    // Chunked transfer: no Content-Length, so the limit applies to the bytes received.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .as_bytes()
        .chunks(100)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let chunked = app
        .http
        .post(app.webhook_url())
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), 413);

    // Exactly at the limit is accepted.
    let fitted_padding = "p".repeat(1024 - (body.len() - padding.len()));
    let fitted = body.replace(&padding, &fitted_padding);
    assert_eq!(fitted.len(), 1024);
    assert_eq!(app.post_callback(&fitted).await.status(), 200);

    assert_eq!(
        app.keys().await.len(),
        1,
        "only the accepted request left a key"
    );
    assert_eq!(app.drain_all().await, 1);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_and_path_are_rejected() {
    let app = spawn_app().await;
    let get = app.http.get(app.webhook_url()).send().await.unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");

    let unknown = app
        .http
        .post(format!("{}/elsewhere", app.address))
        .header("content-type", "application/json")
        .body(failed_body("t1"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    assert!(app.keys().await.is_empty());
    assert_eq!(app.drain_all().await, 0);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_is_408() {
    let app = spawn_app_with(|settings| settings.server.body_read_timeout_ms = 300).await;
    let body = failed_body(&unique_task_id()).into_bytes();
    let (head, tail) = body.split_at(10);
    let (head, tail) = (head.to_vec(), tail.to_vec());
    // Sends the first bytes, then stalls for longer than the body read timeout.
    let trickle = stream::unfold(0, move |step| {
        let (head, tail) = (head.clone(), tail.clone());
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(head), 1)),
                1 => {
                    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                    Some((Ok(tail), 2))
                }
                _ => None,
            }
        }
    });

    let started = std::time::Instant::now();
    let response = app
        .http
        .post(app.webhook_url())
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(trickle))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 408);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response_json(response).await["error"], "body_read_timeout");
    assert!(app.keys().await.is_empty());
    assert_eq!(app.drain_all().await, 0);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_body_is_415() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.webhook_url())
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(failed_body(&unique_task_id()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let answer = response_json(response).await;
    assert_eq!(answer["field"], "Content-Encoding");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("Content-Encoding gzip")
    );
    assert!(app.keys().await.is_empty());
    assert_eq!(app.drain_all().await, 0);
    app.teardown().await;
}
