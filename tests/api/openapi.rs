//! Keeps `docs/openapi.yaml` true: its error codes are those the bridge produces, its paths
//! and methods are those the bridge serves, and real responses for each documented status
//! match the documented headers, media type and body schema.

use std::collections::BTreeSet;

use futures_util::stream;
use reqwest::Method;
use serde_json::{Value, json};
use webhook_bridge::error::{ApiError, METHOD_NOT_ALLOWED, NOT_FOUND};
use webhook_bridge::secret::Secret;

use crate::helpers::{
    REDIS_ADDRESS, TestApp, completed_body, failed_body, redis_through, spawn_app_with,
    unique_task_id,
};
use crate::proxy::{Mode, Proxy};

const DOCUMENT: &str = include_str!("../../docs/openapi.yaml");

const TOKEN: &str = "openapi-test-token-0123456789abcdef0123456789";

/// Methods sent to every documented path. The documented ones must be served, the others get 405.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fn document() -> Value {
    serde_norway::from_str(DOCUMENT).expect("docs/openapi.yaml is YAML")
}

/// Escapes one JSON pointer segment (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Follows `$ref` until `pointer` names an object without one; returns the final pointer.
fn resolve(document: &Value, mut pointer: String) -> String {
    while let Some(target) = document
        .pointer(&pointer)
        .unwrap_or_else(|| panic!("{pointer} exists in the document"))
        .get("$ref")
        .and_then(Value::as_str)
    {
        pointer = target
            .strip_prefix('#')
            .expect("local reference")
            .to_owned();
    }
    pointer
}

/// Returns the JSON pointer to the response object that the document gives for `status`, or
/// to a shared response under `components/responses` when `operation` is `None`.
fn response_pointer(document: &Value, operation: Option<(&str, &str)>, status: u16) -> String {
    let pointer = match operation {
        Some((method, path)) => format!(
            "/paths/{}/{}/responses/{status}",
            escape(path),
            method.to_ascii_lowercase()
        ),
        None => match status {
            404 => "/components/responses/NotFound".to_owned(),
            405 => "/components/responses/MethodNotAllowed".to_owned(),
            _ => panic!("no shared response for {status}"),
        },
    };
    resolve(document, pointer)
}

/// Checks `value` against the schema at `pointer`, with references resolved in the document.
fn validate(document: &Value, pointer: &str, value: &Value, context: &str) {
    let mut root = document.clone();
    root["$ref"] = json!(format!("#{pointer}"));
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .unwrap_or_else(|error| panic!("schema at {pointer} compiles: {error}"));
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|error| format!("{error} at {}", error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{context}: {value} breaks {pointer}: {errors:?}"
    );
}

/// Checks a response against the documented one: status, required headers and their
/// schemas, media type and body schema. Returns the body as JSON (or a string).
async fn check_response(
    document: &Value,
    operation: Option<(&str, &str)>,
    response: reqwest::Response,
    context: &str,
) -> Value {
    let status = response.status().as_u16();
    let pointer = response_pointer(document, operation, status);
    let spec = document.pointer(&pointer).unwrap();

    for (name, header) in spec["headers"].as_object().into_iter().flatten() {
        let header_pointer = resolve(document, format!("{pointer}/headers/{}", escape(name)));
        let header = document.pointer(&header_pointer).unwrap_or(header);
        let value = response.headers().get(name.as_str());
        if header["required"] == true {
            assert!(value.is_some(), "{context}: {status} carries {name}");
        }
        if let Some(value) = value {
            let text = value.to_str().expect("header is text");
            let value = match header["schema"]["type"].as_str() {
                Some("integer") => json!(text.parse::<i64>().expect("integer header")),
                _ => json!(text),
            };
            validate(
                document,
                &format!("{header_pointer}/schema"),
                &value,
                &format!("{context}: header {name}"),
            );
        }
    }

    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.bytes().await.expect("answer body");
    let Some(content) = spec["content"].as_object() else {
        assert!(
            body.is_empty(),
            "{context}: {status} has no documented body"
        );
        return Value::Null;
    };
    let content_type = content_type.unwrap_or_else(|| panic!("{context}: Content-Type is set"));
    let essence = content_type.split(';').next().unwrap().trim();
    assert!(
        content.contains_key(essence),
        "{context}: {status} answers {essence}, documented {:?}",
        content.keys().collect::<Vec<_>>()
    );
    let value = if essence == "application/json" {
        serde_json::from_slice(&body).expect("JSON answer")
    } else {
        json!(String::from_utf8(body.to_vec()).expect("text answer"))
    };
    validate(
        document,
        &format!("{pointer}/content/{}/schema", escape(essence)),
        &value,
        context,
    );
    value
}

/// Collects every `error` code that a response schema of the document allows.
fn documented_codes(value: &Value, codes: &mut BTreeSet<String>) {
    match value {
        Value::Object(object) => {
            if let Some(error) = object.get("properties").and_then(|p| p.get("error")) {
                codes.extend(error.get("const").and_then(Value::as_str).map(String::from));
                let listed = error.get("enum").and_then(Value::as_array);
                codes.extend(
                    listed
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(String::from),
                );
            }
            object
                .values()
                .for_each(|value| documented_codes(value, codes));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|value| documented_codes(value, codes)),
        _ => {}
    }
}

/// Returns the documented operations, as (method, path) pairs.
fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    operations
}

async fn with_token() -> TestApp {
    spawn_app_with(|settings| {
        settings.auth.tokens = vec![Secret::new(TOKEN)];
        settings.server.max_body_bytes = 1024;
        settings.server.body_read_timeout_ms = 300;
    })
    .await
}

async fn post(app: &TestApp, url: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.http
        .post(url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request reaches the bridge")
}

#[test]
fn documented_error_codes_are_those_the_bridge_produces() {
    let mut documented = BTreeSet::new();
    documented_codes(&document(), &mut documented);
    let produced: BTreeSet<String> = ApiError::CODES
        .into_iter()
        .chain([NOT_FOUND, METHOD_NOT_ALLOWED])
        .map(String::from)
        .collect();
    assert_eq!(documented, produced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_routes_are_the_served_routes() {
    let document = document();
    let operations = documented_operations(&document);
    let expected: BTreeSet<(String, String)> = [
        ("POST", "/webhook"),
        ("POST", "/webhook/{token}"),
        ("GET", "/healthz"),
        ("HEAD", "/healthz"),
        ("GET", "/readyz"),
        ("HEAD", "/readyz"),
        ("GET", "/metrics"),
    ]
    .into_iter()
    .map(|(method, path)| (method.to_owned(), path.to_owned()))
    .collect();
    assert_eq!(operations, expected);

    let app = with_token().await;
    let paths: BTreeSet<&String> = operations.iter().map(|(_, path)| path).collect();
    for path in paths {
        let concrete = path.replace("{token}", TOKEN);
        for method in METHODS {
            let documented = operations.contains(&(method.to_owned(), path.clone()));
            let response = app
                .http
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{concrete}", app.address),
                )
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(failed_body(&unique_task_id()))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let context = format!("{method} {path}");
            if documented {
                assert!(
                    ![404, 405].contains(&status),
                    "{context} is served: {status}"
                );
                let operation = (method, path.as_str());
                check_response(&document, Some(operation), response, &context).await;
            } else {
                assert_eq!(status, 405, "{context} is not served");
                let allow = response.headers()["allow"].to_str().unwrap().to_owned();
                assert!(
                    operations.contains(&(allow.clone(), path.clone())),
                    "{context}: Allow {allow} is a documented method"
                );
                if method != "HEAD" {
                    check_response(&document, None, response, &context).await;
                }
            }
        }
    }

    for path in [
        "/",
        "/webhook/a/b",
        "/health",
        "/ready",
        "/metrics/x",
        "/openapi.yaml",
    ] {
        let response = app.get(path).await;
        check_response(&document, None, response, &format!("GET {path}")).await;
    }
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_match_the_documented_schemas() {
    let document = document();
    let app = with_token().await;
    let webhook = ("POST", "/webhook");
    let url = app.webhook_url();
    let check = |response, context: &'static str| {
        let document = &document;
        async move { check_response(document, Some(webhook), response, context).await }
    };

    let task_id = unique_task_id();
    let accepted = check(post(&app, &url, completed_body(&task_id)).await, "accepted").await;
    assert_eq!(accepted["status"], "accepted");
    let duplicate = check(
        post(&app, &url, completed_body(&task_id)).await,
        "duplicate",
    )
    .await;
    assert_eq!(duplicate["status"], "duplicate");
    let path_url = format!("{url}/{TOKEN}");
    let response = app
        .http
        .post(&path_url)
        .header("content-type", "application/json")
        .body(failed_body(&unique_task_id()))
        .send()
        .await
        .unwrap();
    let operation = Some(("POST", "/webhook/{token}"));
    let by_path = check_response(&document, operation, response, "path token").await;
    assert_eq!(by_path["event_type"], "task.failed");

    let rejections = [
        ("{", 400, "invalid_json"),
        (
            r#"{"task_id":"a","task_id":"b","status":"failed","error_message":"x"}"#,
            400,
            "invalid_json",
        ),
        ("{}", 422, "invalid_payload"),
        (
            r#"{"task_id":"t","status":"completed"}"#,
            422,
            "invalid_payload",
        ),
    ];
    for (body, status, error) in rejections {
        let response = post(&app, &url, body).await;
        assert_eq!(response.status(), status, "{body}");
        let answer = check(response, "rejection").await;
        assert_eq!(answer["error"], error, "{body}: {answer}");
    }
    let large = format!("{{\"pad\":\"{}\"}}", "x".repeat(2048));
    let answer = check(post(&app, &url, large).await, "too large").await;
    assert_eq!(answer["error"], "payload_too_large");

    let text = app
        .http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body(failed_body(&unique_task_id()))
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 415);
    let answer = check(text, "media type").await;
    assert_eq!(answer["field"], "Content-Type");

    for (context, request) in [
        ("no token", app.http.post(&url)),
        (
            "wrong token",
            app.http.post(&url).bearer_auth("x".repeat(40)),
        ),
        (
            "wrong query token",
            app.http.post(format!("{url}?token={}", "y".repeat(40))),
        ),
    ] {
        let response = request
            .header("content-type", "application/json")
            .body(failed_body(&unique_task_id()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{context}");
        check_response(&document, Some(webhook), response, context).await;
    }
    let wrong_path = app
        .http
        .post(format!("{url}/{}", "z".repeat(40)))
        .header("content-type", "application/json")
        .body(failed_body(&unique_task_id()))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_path.status(), 401);
    check_response(&document, operation, wrong_path, "wrong path token").await;

    // Sends the first bytes, then stalls for longer than the body read timeout.
    let stalled = stream::unfold(0, |step| async move {
        match step {
            0 => Some((Ok::<_, std::io::Error>(b"{\"task_id\"".to_vec()), 1)),
            1 => {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                Some((Ok(b":\"t\"}".to_vec()), 2))
            }
            _ => None,
        }
    });
    let slow = post(&app, &url, reqwest::Body::wrap_stream(stalled)).await;
    assert_eq!(slow.status(), 408);
    check(slow, "slow body").await;

    let ready = check_response(
        &document,
        Some(("GET", "/readyz")),
        app.get("/readyz").await,
        "readyz",
    )
    .await;
    assert_eq!(ready["status"], "ready");
    let health = app.get("/healthz").await;
    check_response(&document, Some(("GET", "/healthz")), health, "healthz").await;
    let metrics = app.get("/metrics").await;
    let text = check_response(&document, Some(("GET", "/metrics")), metrics, "metrics").await;
    assert!(
        text.as_str()
            .unwrap()
            .contains("webhook_bridge_requests_total")
    );
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_responses_match_the_documented_schemas() {
    let document = document();
    let proxy = Proxy::start(REDIS_ADDRESS.parse().unwrap()).await;
    let app = spawn_app_with(|settings| settings.redis.url = redis_through(&proxy)).await;
    proxy.set(Mode::Refuse);

    let response = app.post_callback(&completed_body(&unique_task_id())).await;
    assert_eq!(response.status(), 503);
    let webhook = Some(("POST", "/webhook"));
    let answer = check_response(&document, webhook, response, "Redis down").await;
    assert_eq!(answer["error"], "dedup_unavailable");

    let readyz = Some(("GET", "/readyz"));
    let ready = check_response(&document, readyz, app.get("/readyz").await, "not ready").await;
    assert_eq!(ready["redis"], "down");
    let head = app
        .http
        .head(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 503);
    check_response(&document, Some(("HEAD", "/readyz")), head, "HEAD not ready").await;

    proxy.set(Mode::Forward);
    app.teardown().await;
}
