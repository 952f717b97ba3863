//! The `healthcheck` subcommand: one `GET /healthz` to the bridge's own port over loopback,
//! for container health checks that have no HTTP client. It uses a plain TCP stream and
//! reads only the status line.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Time allowed for the whole check: connecting, sending the request and reading the status
/// line. It stays below the 3 s timeout of the image's and the Compose file's health checks,
/// so that a slow bridge fails with this tool's message rather than Docker's.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Maximum number of bytes read for the status line. The bridge sends a far shorter one.
const MAX_STATUS_LINE_BYTES: usize = 1024;

/// A failed health check, named by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("{step} {address} failed: {cause}")]
    Io {
        step: &'static str,
        address: SocketAddr,
        cause: io::Error,
    },
    #[error("{step} {address} timed out after {timeout:?}")]
    Timeout {
        step: &'static str,
        address: SocketAddr,
        timeout: Duration,
    },
    #[error("GET /healthz on {address} returned {status_line:?}, not 200")]
    Status {
        address: SocketAddr,
        status_line: String,
    },
}

/// Returns the loopback address to check for a bridge listening on `listen`: `[::1]` when it
/// listens on IPv6 loopback, else `127.0.0.1`, which also reaches `0.0.0.0` and `[::]`.
///
/// NOTE: a bridge bound to one non-loopback address (such as `10.0.0.5:8080`) cannot be
/// reached this way, so the check fails for it.
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = if listen.ip() == Ipv6Addr::LOCALHOST {
        Ipv6Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::LOCALHOST.into()
    };
    SocketAddr::new(ip, listen.port())
}

/// Sends `GET /healthz` to `address` and succeeds when the status code is 200, all within
/// `timeout`.
pub fn check(address: SocketAddr, timeout: Duration) -> Result<(), HealthcheckError> {
    let io_error = |step, cause: io::Error| match cause.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => HealthcheckError::Timeout {
            step,
            address,
            timeout,
        },
        _ => HealthcheckError::Io {
            step,
            address,
            cause,
        },
    };

    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|cause| io_error("connecting to", cause))?;
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_write_timeout(Some(left.max(Duration::from_millis(1))))
        .and_then(|()| {
            let request =
                format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes())
        })
        .map_err(|cause| io_error("sending GET /healthz to", cause))?;

    let status_line = read_status_line(&mut stream, deadline)
        .map_err(|cause| io_error("reading the response from", cause))?;
    if is_ok_status(&status_line) {
        return Ok(());
    }
    Err(HealthcheckError::Status {
        address,
        status_line,
    })
}

/// Reads up to the end of the first line, until `deadline`. Returns what arrived, without
/// the line break, when the peer closes the connection earlier.
fn read_status_line(stream: &mut TcpStream, deadline: Instant) -> io::Result<String> {
    let mut received = Vec::new();
    let mut chunk = [0_u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;

        let read = match stream.read(&mut chunk) {
            Ok(read) => read,
            Err(cause) if cause.kind() == io::ErrorKind::Interrupted => continue,
            Err(cause) => return Err(cause),
        };
        received.extend_from_slice(&chunk[..read]);
        let line_end = received.iter().position(|&byte| byte == b'\n');
        if read == 0 || line_end.is_some() || received.len() >= MAX_STATUS_LINE_BYTES {
            let end = line_end
                .unwrap_or(received.len())
                .min(MAX_STATUS_LINE_BYTES);
            let line = String::from_utf8_lossy(&received[..end]);
            return Ok(line.trim_end_matches('\r').to_owned());
        }
    }
}

/// Accepts `HTTP/1.x 200 ...`.
fn is_ok_status(status_line: &str) -> bool {
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    version.starts_with("HTTP/1.") && parts.next() == Some("200")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_address_uses_loopback() {
        let cases = [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:9000", "127.0.0.1:9000"),
            ("10.1.2.3:80", "127.0.0.1:80"),
            ("[::]:8080", "127.0.0.1:8080"),
            ("[::1]:8080", "[::1]:8080"),
        ];
        for (listen, expected) in cases {
            let probed = probe_address(listen.parse().unwrap());
            assert_eq!(probed.to_string(), expected, "listen {listen}");
        }
    }

    #[test]
    fn only_200_status_passes() {
        assert!(is_ok_status("HTTP/1.1 200 OK"));
        assert!(is_ok_status("HTTP/1.0 200"));
        assert!(!is_ok_status("HTTP/1.1 503 Service Unavailable"));
        assert!(!is_ok_status("HTTP/1.1 2000 OK"));
        assert!(!is_ok_status("SSH-2.0-OpenSSH 200"));
        assert!(!is_ok_status(""));
    }

    #[test]
    fn silent_server_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        // The kernel completes the handshake from the backlog, and nothing ever responds.
        let error = check(address, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(error, HealthcheckError::Timeout { .. }), "{error}");
        assert!(
            error.to_string().contains("timed out after 200ms"),
            "{error}"
        );
        drop(listener);
    }

    #[test]
    fn closed_connection_without_answer_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // Reading the request first makes the close a clean end of stream, not a reset.
            let mut request = Vec::new();
            let mut chunk = [0_u8; 256];
            while !request.ends_with(b"\r\n\r\n") {
                let read = stream.read(&mut chunk).unwrap();
                assert!(read > 0, "the request head arrived");
                request.extend_from_slice(&chunk[..read]);
            }
        });
        let error = check(address, TIMEOUT).unwrap_err();
        server.join().unwrap();
        match error {
            HealthcheckError::Status { status_line, .. } => assert_eq!(status_line, ""),
            other => panic!("unexpected error: {other}"),
        }
    }
}
