//! Authentication of callbacks: tokens in the path, the query string and a Bearer header,
//! Standard Webhooks signatures, and client networks behind trusted proxies. A rejected
//! request leaves nothing in the broker or Redis, counts in a metric, and logs no secret.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use webhook_bridge::Settings;
use webhook_bridge::secret::Secret;

use crate::helpers::*;

const TOKEN: &str = "tok-0123456789abcdef0123456789abcdef";
const NEXT_TOKEN: &str = "tok-fedcba9876543210fedcba9876543210";
const WRONG_TOKEN: &str = "tok-00000000000000000000000000000000";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Another valid secret: 32 bytes of 0x07.
const OTHER_SECRET: &str = "whsec_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

fn with_tokens(tokens: &[&str]) -> impl FnOnce(&mut Settings) {
    let tokens: Vec<Secret> = tokens.iter().map(|token| Secret::new(token)).collect();
    move |settings| settings.auth.tokens = tokens
}

fn with_secret(settings: &mut Settings) {
    settings.auth.signing_secrets = vec![Secret::new(SECRET)];
}

fn expected_rejection() -> Value {
    json!({
        "status": "rejected",
        "error": "unauthorized",
        "message": "missing or invalid credentials",
    })
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// Returns the `webhook-signature` value for `body`, signed with `secret` (`whsec_...`).
fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// Posts `body` as JSON to `path` of the bridge, with `headers`.
async fn post(
    app: &TestApp,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> reqwest::Response {
    let mut request = app
        .http
        .post(format!("{}{path}", app.address))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("request reaches the bridge")
}

/// Posts a callback signed with `secret` at `timestamp`; `tamper` changes the body after
/// signing.
async fn post_signed(
    app: &TestApp,
    secret: &str,
    timestamp: i64,
    tamper: bool,
) -> reqwest::Response {
    let body = completed_body(&unique_task_id());
    let id = format!("msg_{}", unique_task_id());
    let signature = sign(secret, &id, timestamp, &body);
    let sent = if tamper {
        body.replace("outputs", "0utputs")
    } else {
        body
    };
    let headers = [
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    post(app, "/webhook", &headers, &sent).await
}

/// Checks that `response` is the 401 response that every failure gets.
async fn assert_unauthorized(response: reqwest::Response, case: &str) {
    assert_eq!(response.status(), 401, "{case}");
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="webhook-bridge""#,
        "{case}"
    );
    let body = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{case}: {body}"));
    assert_eq!(body, expected_rejection(), "{case}");
}

/// Checks that nothing was published or claimed.
async fn assert_nothing_forwarded(app: &TestApp) {
    assert_eq!(app.drain_all().await, 0, "no event was published");
    assert_eq!(app.keys().await, Vec::<String>::new(), "no key was written");
}

async fn metric(app: &TestApp, series: &str) -> Option<String> {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_owned)
}

#[tokio::test]
async fn token_accepted_in_path_query_and_header() {
    let app = spawn_app_with(with_tokens(&[TOKEN])).await;
    let cases = [
        (format!("/webhook/{TOKEN}"), vec![]),
        (format!("/webhook?token={TOKEN}"), vec![]),
        (
            "/webhook".to_owned(),
            vec![("authorization", format!("Bearer {TOKEN}"))],
        ),
    ];
    for (path, headers) in &cases {
        let response = post(&app, path, headers, &completed_body(&unique_task_id())).await;
        assert_eq!(response.status(), 200, "{path} {headers:?}");
        assert_eq!(response_json(response).await["status"], "accepted");
    }
    assert_eq!(app.drain(app.completed_queue()).await.len(), 3);
    app.teardown().await;
}

#[tokio::test]
async fn wrong_or_missing_token_is_rejected() {
    let app = spawn_app_with(with_tokens(&[TOKEN])).await;
    let cases = [
        ("/webhook".to_owned(), vec![]),
        (format!("/webhook/{WRONG_TOKEN}"), vec![]),
        (format!("/webhook/{}", &TOKEN[..TOKEN.len() - 1]), vec![]),
        (format!("/webhook?token={WRONG_TOKEN}"), vec![]),
        (format!("/webhook?tok={TOKEN}"), vec![]),
        (
            "/webhook".to_owned(),
            vec![("authorization", format!("Bearer {WRONG_TOKEN}"))],
        ),
        (
            "/webhook".to_owned(),
            vec![("authorization", format!("Basic {TOKEN}"))],
        ),
    ];
    for (path, headers) in &cases {
        let response = post(&app, path, headers, &completed_body(&unique_task_id())).await;
        assert_unauthorized(response, &format!("{path} {headers:?}")).await;
    }
    assert_nothing_forwarded(&app).await;
    app.teardown().await;
}

#[tokio::test]
async fn rejected_before_body_and_media_type() {
    let app = spawn_app_with(|settings| {
        with_tokens(&[TOKEN])(settings);
        settings.server.max_body_bytes = 1024;
    })
    .await;
    // Without credentials, neither the size limit (413) nor the media type (415) is revealed.
    let large = app
        .post_raw(vec![b' '; 4096], Some("application/json"))
        .await;
    assert_unauthorized(large, "large body").await;
    let text = app.post_raw(b"hello".to_vec(), Some("text/plain")).await;
    assert_unauthorized(text, "text/plain").await;

    let path = format!("/webhook/{TOKEN}");
    let wrong_type = app
        .http
        .post(format!("{}{path}", app.address))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(
        wrong_type.status(),
        415,
        "a valid token reaches the media type check"
    );
    app.teardown().await;
}

#[tokio::test]
async fn unsigned_request_is_rejected_before_its_body() {
    let app = spawn_app_with(|settings| {
        with_tokens(&[TOKEN])(settings);
        with_secret(settings);
        settings.server.max_in_flight = 1;
    })
    .await;
    // No token and no signature headers: the 401 is sent before the body, which never
    // arrives, so the request neither waits for the body timeout nor holds an in-flight slot.
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    stalled
        .write_all(
            b"POST /webhook HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let mut answer = vec![0_u8; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(3), stalled.read(&mut answer))
        .await
        .expect("answered before the body arrived")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    let body = completed_body(&unique_task_id());
    let bearer = [("authorization", format!("Bearer {TOKEN}"))];
    let accepted = post(&app, "/webhook", &bearer, &body).await;
    assert_eq!(
        accepted.status(),
        200,
        "the stalled request holds no in-flight slot"
    );
    app.teardown().await;
}

#[tokio::test]
async fn two_tokens_both_work_during_rotation() {
    let app = spawn_app_with(with_tokens(&[TOKEN, NEXT_TOKEN])).await;
    for token in [TOKEN, NEXT_TOKEN] {
        let path = format!("/webhook/{token}");
        let response = post(&app, &path, &[], &completed_body(&unique_task_id())).await;
        assert_eq!(response.status(), 200, "{token}");
    }
    let path = format!("/webhook/{WRONG_TOKEN}");
    let response = post(&app, &path, &[], &completed_body(&unique_task_id())).await;
    assert_unauthorized(response, "third token").await;
    assert_eq!(app.drain(app.completed_queue()).await.len(), 2);
    app.teardown().await;
}

#[tokio::test]
async fn path_form_exists_only_with_tokens() {
    let app = spawn_app().await;
    let path = format!("/webhook/{TOKEN}");
    let response = post(&app, &path, &[], &completed_body(&unique_task_id())).await;
    assert_eq!(response.status(), 404);
    app.teardown().await;

    let app = spawn_app_with(with_tokens(&[TOKEN])).await;
    let response = app.get(&format!("/webhook/{WRONG_TOKEN}")).await;
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    app.teardown().await;
}

#[tokio::test]
async fn valid_signature_is_accepted() {
    let app = spawn_app_with(with_secret).await;
    let response = post_signed(&app, SECRET, now_secs(), false).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response_json(response).await["status"], "accepted");
    assert_eq!(app.drain(app.completed_queue()).await.len(), 1);
    app.teardown().await;
}

#[tokio::test]
async fn bad_signatures_are_rejected() {
    let app = spawn_app_with(with_secret).await;
    let now = now_secs();
    let cases = [
        ("tampered body", post_signed(&app, SECRET, now, true).await),
        (
            "stale timestamp",
            post_signed(&app, SECRET, now - 400, false).await,
        ),
        (
            "future timestamp",
            post_signed(&app, SECRET, now + 400, false).await,
        ),
        (
            "wrong secret",
            post_signed(&app, OTHER_SECRET, now, false).await,
        ),
        (
            "no signature",
            app.post_callback(&completed_body(&unique_task_id())).await,
        ),
        (
            "token instead",
            post(
                &app,
                &format!("/webhook?token={TOKEN}"),
                &[],
                &completed_body(&unique_task_id()),
            )
            .await,
        ),
    ];
    for (case, response) in cases {
        assert_unauthorized(response, case).await;
    }
    assert_nothing_forwarded(&app).await;
    app.teardown().await;
}

#[tokio::test]
async fn token_or_signature_suffices_when_both_set() {
    let app = spawn_app_with(|settings| {
        with_tokens(&[TOKEN])(settings);
        with_secret(settings);
    })
    .await;
    let signed = post_signed(&app, SECRET, now_secs(), false).await;
    assert_eq!(signed.status(), 200, "signature without token");
    let path = format!("/webhook/{TOKEN}");
    let with_token = post(&app, &path, &[], &completed_body(&unique_task_id())).await;
    assert_eq!(with_token.status(), 200, "token without signature");
    assert_eq!(app.drain(app.completed_queue()).await.len(), 2);

    let wrong_path = format!("/webhook/{WRONG_TOKEN}");
    let neither = post(&app, &wrong_path, &[], &completed_body(&unique_task_id())).await;
    assert_unauthorized(neither, "wrong token, no signature").await;
    let tampered = post_signed(&app, SECRET, now_secs(), true).await;
    assert_unauthorized(tampered, "tampered body, no token").await;
    assert_eq!(
        app.drain_all().await,
        0,
        "no event was published after a 401"
    );
    assert_eq!(
        app.keys().await.len(),
        2,
        "only the accepted events were claimed"
    );
    app.teardown().await;
}

#[tokio::test]
async fn rejections_are_counted() {
    let app = spawn_app_with(with_tokens(&[TOKEN])).await;
    let series = r#"webhook_bridge_requests_total{outcome="rejected",reason="unauthorized"}"#;
    for _ in 0..3 {
        let response = app.post_callback(&completed_body(&unique_task_id())).await;
        assert_eq!(response.status(), 401);
    }
    assert_eq!(metric(&app, series).await.as_deref(), Some("3"));
    let accepted = r#"webhook_bridge_requests_total{outcome="accepted",reason="none"}"#;
    assert_eq!(metric(&app, accepted).await.as_deref(), Some("0"));
    app.teardown().await;
}

#[tokio::test]
async fn allow_list_applies_to_the_peer() {
    // The test client connects from 127.0.0.1, which is outside this list, and no proxy is
    // trusted, so X-Forwarded-For changes nothing.
    let app = spawn_app_with(|settings| {
        settings.auth.allowed_networks = vec!["192.0.2.0/24".to_owned()];
    })
    .await;
    let forged = [("x-forwarded-for", "192.0.2.5".to_owned())];
    let response = post(
        &app,
        "/webhook",
        &forged,
        &completed_body(&unique_task_id()),
    )
    .await;
    assert_unauthorized(response, "outside the list").await;
    assert_nothing_forwarded(&app).await;
    app.teardown().await;

    let app = spawn_app_with(|settings| {
        settings.auth.allowed_networks = vec!["127.0.0.0/8".to_owned()];
    })
    .await;
    let response = app.post_callback(&completed_body(&unique_task_id())).await;
    assert_eq!(response.status(), 200, "inside the list");
    app.teardown().await;
}

#[tokio::test]
async fn allow_list_believes_trusted_proxies() {
    let app = spawn_app_with(|settings| {
        with_tokens(&[TOKEN])(settings);
        settings.auth.allowed_networks = vec!["192.0.2.0/24".to_owned()];
        settings.auth.trusted_proxies = vec!["127.0.0.1".to_owned()];
    })
    .await;
    let path = format!("/webhook/{TOKEN}");
    let cases = [
        ("192.0.2.5", 200),
        ("198.51.100.1, 192.0.2.5", 200),
        ("198.51.100.1", 401),
        // A client that puts an allowed address first does not get in: the proxy appended
        // the real one.
        ("192.0.2.5, 198.51.100.1", 401),
        ("192.0.2.5, 127.0.0.1", 200),
        ("", 401),
    ];
    for (forwarded_for, status) in cases {
        let headers = [("x-forwarded-for", forwarded_for.to_owned())];
        let response = post(&app, &path, &headers, &completed_body(&unique_task_id())).await;
        assert_eq!(
            response.status(),
            status,
            "X-Forwarded-For: {forwarded_for}"
        );
    }
    let no_header = post(&app, &path, &[], &completed_body(&unique_task_id())).await;
    assert_eq!(no_header.status(), 401, "the proxy itself is not allowed");
    assert_eq!(app.drain(app.completed_queue()).await.len(), 3);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_bridge_warns_at_startup() {
    let settings = test_settings();
    let port = free_port();
    let bridge = BridgeProcess::spawn(bridge_environment(&settings, port));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_serving(&http, &base).await;

    let output = bridge.stop_with("TERM").await;
    let log = String::from_utf8_lossy(&output.stderr);
    let warning = log
        .lines()
        .find(|line| line.contains("No authentication configured"))
        .unwrap_or_else(|| panic!("no warning about the open endpoint: {log}"));
    assert!(warning.contains("WARN"), "{warning}");
    remove_test_data(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_hold_no_credentials() {
    let settings = test_settings();
    let port = free_port();
    let mut environment = bridge_environment(&settings, port);
    environment.extend([
        (
            "WEBHOOK_BRIDGE__AUTH__TOKENS".to_owned(),
            format!("{TOKEN},{NEXT_TOKEN}"),
        ),
        (
            "WEBHOOK_BRIDGE__AUTH__SIGNING_SECRETS".to_owned(),
            SECRET.to_owned(),
        ),
        (
            "WEBHOOK_BRIDGE__SERVER__ACCESS_LOG".to_owned(),
            "true".to_owned(),
        ),
    ]);
    let bridge = BridgeProcess::spawn(environment);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&http, &base).await;

    let send = |path: String, headers: Vec<(&'static str, String)>, body: String| {
        let mut request = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let accepted = send(
        format!("/webhook/{TOKEN}"),
        vec![],
        completed_body(&unique_task_id()),
    );
    assert_eq!(accepted.await.unwrap().status(), 200);

    let body = completed_body(&unique_task_id());
    let id = format!("msg_{}", unique_task_id());
    let signature = sign(SECRET, &id, now_secs(), &body);
    let signed_headers = vec![
        ("webhook-id", id),
        ("webhook-timestamp", now_secs().to_string()),
        ("webhook-signature", signature.clone()),
    ];
    let signed = send("/webhook".to_owned(), signed_headers, body);
    assert_eq!(signed.await.unwrap().status(), 200);

    let rejected = [
        send(
            format!("/webhook/{WRONG_TOKEN}"),
            vec![],
            completed_body("a"),
        ),
        send(
            format!("/webhook?token={WRONG_TOKEN}"),
            vec![],
            completed_body("b"),
        ),
        send(
            "/webhook".to_owned(),
            vec![("authorization", format!("Bearer {WRONG_TOKEN}"))],
            completed_body("c"),
        ),
        send(
            "/webhook".to_owned(),
            vec![
                ("webhook-id", "msg_x".to_owned()),
                ("webhook-timestamp", now_secs().to_string()),
                ("webhook-signature", signature.clone()),
            ],
            completed_body("d"),
        ),
    ];
    for response in rejected {
        assert_eq!(response.await.unwrap().status(), 401);
    }

    let output = bridge.stop_with("TERM").await;
    assert!(output.status.success(), "exit status {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    for secret in [
        TOKEN,
        NEXT_TOKEN,
        WRONG_TOKEN,
        &SECRET["whsec_".len()..],
        &signature["v1,".len()..],
    ] {
        assert!(!log.contains(secret), "{secret} is in the log: {log}");
    }
    assert!(log.contains(r#""POST /webhook/***" 200"#), "{log}");
    assert!(log.contains(r#""POST /webhook/***" 401"#), "{log}");
    assert!(
        log.contains("Callbacks need a valid token or signature."),
        "{log}"
    );

    // Four rejections within 10 s make one line.
    let rejections: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Rejected a callback without valid credentials."))
        .collect();
    assert_eq!(rejections.len(), 1, "{log}");
    assert!(
        rejections[0].contains("required=token_or_signature"),
        "{log}"
    );
    assert!(rejections[0].contains("client=127.0.0.1"), "{log}");
    remove_test_data(&settings).await;
}
