//! Redis over TLS (`rediss://`): the bridge trusts the CA from `SSL_CERT_FILE` and claims
//! events on a TLS-only Redis that the test starts itself.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

fn run(program: &str, args: &[&str], dir: &Path) {
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|error| panic!("{program} runs: {error}"));
    assert!(status.success(), "{program} {args:?} failed");
}

/// Creates a CA and a server certificate for localhost and 127.0.0.1 in `dir`.
fn make_certificates(dir: &Path) {
    run(
        "openssl",
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        ]
        .into_iter()
        .chain(["-days", "1", "-subj", "/CN=webhook-bridge test CA"])
        .collect::<Vec<_>>(),
        dir,
    );
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]
        .into_iter()
        .chain(["-subj", "/CN=localhost"])
        .collect::<Vec<_>>(),
        dir,
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
        ]
        .into_iter()
        .chain([
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ])
        .collect::<Vec<_>>(),
        dir,
    );
}

struct TlsRedis {
    port: u16,
    dir: std::path::PathBuf,
}

impl TlsRedis {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("webhook-bridge-tls-{}", unique_task_id()));
        std::fs::create_dir_all(&dir).unwrap();
        make_certificates(&dir);
        let port = free_port();
        let port_text = port.to_string();
        run(
            "redis-server",
            &[
                "--port",
                "0",
                "--tls-port",
                &port_text,
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
                "--tls-ca-cert-file",
                "ca.pem",
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--logfile",
                "redis.log",
            ],
            &dir,
        );
        let redis = Self { port, dir };
        let started = Instant::now();
        while redis.cli(&["PING"]) != "PONG" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "TLS Redis started"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["--tls", "--cacert", "ca.pem", "-p", &self.port.to_string()])
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.cli(&["SHUTDOWN", "NOSAVE"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_deduplicates() {
    let redis = tokio::task::spawn_blocking(TlsRedis::start).await.unwrap();
    let url = format!("rediss://localhost:{}", redis.port);
    // rustls-native-certs reads the trusted roots from SSL_CERT_FILE when it is set, so the
    // test's CA is trusted without touching the system store.
    let certificate = redis.dir.join("ca.pem");
    let port = free_port();
    let settings = test_settings();
    let mut variables = bridge_environment(&settings, port);
    variables.push((
        "SSL_CERT_FILE".to_owned(),
        certificate.display().to_string(),
    ));
    variables.push(("WEBHOOK_BRIDGE__REDIS__URL".to_owned(), url));
    let bridge = BridgeProcess::spawn(variables);

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&http, &base).await;

    let task_id = unique_task_id();
    let body = failed_body(&task_id);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let response = http
            .post(format!("{base}/webhook"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        statuses.push(answer["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses, ["accepted", "duplicate"]);
    let key = format!("{}{task_id}:failed", settings.redis.key_prefix);
    assert_eq!(
        redis.cli(&["GET", &key]),
        "done",
        "the key lives in the TLS Redis"
    );

    let output = bridge.stop_with("TERM").await;
    assert!(output.status.success());

    remove_test_data(&settings).await;
}
