//! Authentication of callback requests: client networks, shared tokens and Standard Webhooks
//! signatures. A request that fails gets the same 401 response whatever failed. The log
//! names the failed check, at most once per [`REJECTION_LOG_INTERVAL`].

mod network;
mod signature;
mod token;

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use actix_web::HttpRequest;
use actix_web::http::header::{self, HeaderMap};
use log::{info, warn};

pub use network::{Networks, client_address};
pub use signature::{SignatureError, SignedHeaders, SigningKeys};
pub use token::{MAX_TOKEN_CHARS, MIN_TOKEN_CHARS, Tokens};

use crate::config::{AuthSettings, ConfigError};
use crate::error::ApiError;
use crate::event::unix_secs;
use crate::log_throttle::LogThrottle;

/// Shortest time between two log lines about rejected requests. A client that keeps trying
/// would otherwise fill the log; each line counts the rejections left out since the last.
pub const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Name of the path parameter and of the query parameter that carry a token.
pub const TOKEN_PARAMETER: &str = "token";

/// Result of the checks on the request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The request may go on: it carries a valid token, or no credentials are required.
    Granted,
    /// The request needs a valid signature, which can only be checked on the body.
    NeedsSignature,
}

/// The credentials that a rejected request lacked, for the log.
#[derive(Debug, Clone, Copy)]
enum Requirement {
    Network,
    Token,
    Signature,
    TokenOrSignature,
}

impl Requirement {
    fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Token => "token",
            Self::Signature => "signature",
            Self::TokenOrSignature => "token_or_signature",
        }
    }
}

/// The authentication settings in checked form, shared by every request.
pub struct Authenticator {
    tokens: Tokens,
    signing_keys: SigningKeys,
    timestamp_tolerance_secs: u64,
    allowed_networks: Networks,
    trusted_proxies: Networks,
    rejection_log: LogThrottle<()>,
}

impl Authenticator {
    /// Checks and decodes `settings`; the error names the key at fault.
    pub fn new(settings: &AuthSettings) -> Result<Self, ConfigError> {
        let tokens = Tokens::new(&settings.tokens)
            .map_err(|message| ConfigError::new("auth.tokens", message))?;
        let signing_keys = SigningKeys::new(&settings.signing_secrets)
            .map_err(|message| ConfigError::new("auth.signing_secrets", message))?;
        let allowed_networks = Networks::parse(&settings.allowed_networks)
            .map_err(|message| ConfigError::new("auth.allowed_networks", message))?;
        let trusted_proxies = Networks::parse(&settings.trusted_proxies)
            .map_err(|message| ConfigError::new("auth.trusted_proxies", message))?;
        Ok(Self {
            tokens,
            signing_keys,
            timestamp_tolerance_secs: settings.timestamp_tolerance_secs,
            allowed_networks,
            trusted_proxies,
            rejection_log: LogThrottle::new(REJECTION_LOG_INTERVAL),
        })
    }

    /// Returns whether tokens are configured, so that the path form of the endpoint exists.
    pub fn accepts_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Logs at startup what a request needs, or a warning when it needs nothing.
    pub fn log_summary(&self) {
        if self.tokens.is_empty() && self.signing_keys.is_empty() {
            warn!(
                "No authentication configured: anyone who can reach the webhook can publish events. Set auth.tokens or auth.signing_secrets."
            );
        } else {
            info!(
                tokens = self.tokens.len(),
                signing_secrets = self.signing_keys.len(),
                timestamp_tolerance_secs = self.timestamp_tolerance_secs;
                "Callbacks need a valid token or signature."
            );
        }
        if !self.allowed_networks.is_empty() {
            info!(
                allowed_networks = self.allowed_networks.len(),
                trusted_proxies = self.trusted_proxies.len();
                "Callbacks are accepted from the allowed networks only."
            );
        }
    }

    /// Returns the client address of `request`: its peer, or the address that a trusted
    /// proxy put in `X-Forwarded-For`.
    pub fn client_address(&self, request: &HttpRequest) -> Option<IpAddr> {
        let peer = request.peer_addr()?.ip();
        let forwarded_for = request
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|value| value.to_str().ok());
        Some(client_address(peer, forwarded_for, &self.trusted_proxies))
    }

    /// Runs the checks that need no body: the client network, then the token. Returns
    /// [`ApiError::Unauthorized`] when they fail.
    pub fn check_head(&self, request: &HttpRequest) -> Result<Admission, ApiError> {
        if !self.allowed_networks.is_empty() {
            let client = self.client_address(request);
            if !client.is_some_and(|client| self.allowed_networks.contains(client)) {
                return Err(self.reject(
                    request,
                    Requirement::Network,
                    &"outside allowed_networks",
                ));
            }
        }

        match (self.tokens.is_empty(), self.signing_keys.is_empty()) {
            (true, true) => Ok(Admission::Granted),
            _ if self.has_valid_token(request) => Ok(Admission::Granted),
            (false, true) => {
                Err(self.reject(request, Requirement::Token, &self.token_failure(request)))
            }
            // What needs no body is checked now, so that a request without a usable
            // signature cannot hold an in-flight slot while its body trickles in.
            (_, false) => {
                let now_secs = unix_secs(SystemTime::now());
                signature::check_headers(
                    signed_headers(request),
                    now_secs,
                    self.timestamp_tolerance_secs,
                )
                .map(|_| Admission::NeedsSignature)
                .map_err(|cause| self.signature_rejection(request, &cause))
            }
        }
    }

    /// Checks the Standard Webhooks signature of `body`, for a request that
    /// [`Authenticator::check_head`] admitted with [`Admission::NeedsSignature`].
    pub fn check_signature(
        &self,
        request: &HttpRequest,
        body: &[u8],
        received_at: SystemTime,
    ) -> Result<(), ApiError> {
        let verified = self.signing_keys.verify(
            signed_headers(request),
            body,
            unix_secs(received_at),
            self.timestamp_tolerance_secs,
        );
        verified.map_err(|cause| self.signature_rejection(request, &cause))
    }

    /// Logs and returns the rejection of a request whose signature failed, naming the token
    /// failure too when tokens could have admitted it.
    fn signature_rejection(
        &self,
        request: &HttpRequest,
        cause: &signature::SignatureError,
    ) -> ApiError {
        if self.tokens.is_empty() {
            self.reject(request, Requirement::Signature, cause)
        } else {
            let cause = format!("{}; {cause}", self.token_failure(request));
            self.reject(request, Requirement::TokenOrSignature, &cause)
        }
    }

    /// Returns whether any token that `request` presents is valid.
    fn has_valid_token(&self, request: &HttpRequest) -> bool {
        presented_tokens(request).any(|candidate| self.tokens.contains(candidate))
    }

    fn token_failure(&self, request: &HttpRequest) -> &'static str {
        if presented_tokens(request).next().is_some() {
            "token does not match"
        } else {
            "no token presented"
        }
    }

    /// Logs a rejection, rate-limited, and returns the error for the response. The line
    /// names the failed check and never contains a credential.
    fn reject(
        &self,
        request: &HttpRequest,
        requirement: Requirement,
        cause: &dyn fmt::Display,
    ) -> ApiError {
        if let Some(left_out) = self.rejection_log.admit(()) {
            let peer = request.peer_addr().map(|peer| peer.ip().to_string());
            let client = self
                .client_address(request)
                .map(|client| client.to_string());
            warn!(
                client = client.as_deref().unwrap_or("unknown"),
                peer = peer.as_deref().unwrap_or("unknown"),
                required = requirement.as_str(),
                cause:% = cause,
                rejections_not_logged = left_out;
                "Rejected a callback without valid credentials."
            );
        }
        ApiError::Unauthorized
    }
}

/// Returns the tokens that `request` presents: in the path, the query string and the
/// `Authorization: Bearer` header. Only the first `token` query parameter counts.
fn presented_tokens(request: &HttpRequest) -> impl Iterator<Item = &str> {
    let path = request.match_info().get(TOKEN_PARAMETER);
    let query = query_token(request.query_string());
    let bearer =
        header_text(request.headers(), header::AUTHORIZATION.as_str()).and_then(bearer_token);
    path.into_iter().chain(query).chain(bearer)
}

fn query_token(query: &str) -> Option<&str> {
    // Tokens consist of unreserved characters, so a valid one is never percent-encoded and
    // the raw parameter value can be compared as it is.
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == TOKEN_PARAMETER)
        .map(|(_, value)| value)
}

/// Returns the token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 9110, section 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Returns the Standard Webhooks headers of `request`.
fn signed_headers(request: &HttpRequest) -> SignedHeaders<'_> {
    let headers = request.headers();
    SignedHeaders {
        id: header_text(headers, signature::ID_HEADER),
        timestamp: header_text(headers, signature::TIMESTAMP_HEADER),
        signatures: header_text(headers, signature::SIGNATURE_HEADER),
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;
    use crate::secret::Secret;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn authenticator(customize: impl FnOnce(&mut AuthSettings)) -> Authenticator {
        let mut settings = AuthSettings::default();
        customize(&mut settings);
        Authenticator::new(&settings).unwrap()
    }

    fn with_token() -> Authenticator {
        authenticator(|settings| settings.tokens = vec![Secret::new(TOKEN)])
    }

    #[test]
    fn tokens_are_read_from_query_and_header() {
        let auth = with_token();
        for request in [
            TestRequest::post().uri(&format!("/webhook?token={TOKEN}")),
            TestRequest::post().uri(&format!("/webhook?a=1&token={TOKEN}&token=x")),
            TestRequest::post().insert_header(("authorization", format!("Bearer {TOKEN}"))),
            TestRequest::post().insert_header(("authorization", format!("bearer  {TOKEN}"))),
        ] {
            let request = request.to_http_request();
            assert_eq!(auth.check_head(&request).ok(), Some(Admission::Granted));
        }
    }

    #[test]
    fn wrong_or_missing_tokens_are_rejected() {
        let auth = with_token();
        for request in [
            TestRequest::post().uri("/webhook"),
            TestRequest::post().uri("/webhook?token=wrong"),
            TestRequest::post().uri(&format!("/webhook?x=1&token=wrong&token={TOKEN}")),
            TestRequest::post().uri(&format!("/webhook?tokens={TOKEN}")),
            TestRequest::post().insert_header(("authorization", format!("Basic {TOKEN}"))),
            TestRequest::post().insert_header(("authorization", TOKEN)),
        ] {
            let request = request.to_http_request();
            let result = auth.check_head(&request);
            assert!(matches!(result, Err(ApiError::Unauthorized)), "{request:?}");
        }
    }

    #[test]
    fn open_bridge_grants_everything() {
        let auth = authenticator(|_| {});
        let request = TestRequest::post().to_http_request();
        assert_eq!(auth.check_head(&request).ok(), Some(Admission::Granted));
        assert!(!auth.accepts_tokens());
    }

    #[test]
    fn signature_is_needed_without_a_token() {
        let auth = authenticator(|settings| {
            settings.tokens = vec![Secret::new(TOKEN)];
            settings.signing_secrets = vec![Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")];
        });
        // Without usable signature headers, the request is rejected before its body is read.
        let request = TestRequest::post()
            .uri("/webhook?token=wrong")
            .to_http_request();
        assert!(matches!(
            auth.check_head(&request),
            Err(ApiError::Unauthorized)
        ));
        let now = unix_secs(SystemTime::now()).to_string();
        let stale = (unix_secs(SystemTime::now()) - 3_600).to_string();
        let signed = |timestamp: &str| {
            TestRequest::post()
                .uri("/webhook?token=wrong")
                .insert_header(("webhook-id", "msg_1"))
                .insert_header(("webhook-timestamp", timestamp))
                .insert_header((
                    "webhook-signature",
                    "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                ))
                .to_http_request()
        };
        assert_eq!(
            auth.check_head(&signed(&now)).ok(),
            Some(Admission::NeedsSignature)
        );
        assert!(matches!(
            auth.check_head(&signed(&stale)),
            Err(ApiError::Unauthorized)
        ));
        let request = TestRequest::post()
            .uri(&format!("/webhook?token={TOKEN}"))
            .to_http_request();
        assert_eq!(auth.check_head(&request).ok(), Some(Admission::Granted));
    }

    #[test]
    fn network_outside_the_list_is_rejected() {
        let auth = authenticator(|settings| {
            settings.allowed_networks = vec!["192.0.2.0/24".to_owned()];
            settings.trusted_proxies = vec!["127.0.0.1".to_owned()];
        });
        let direct = TestRequest::post().peer_addr("192.0.2.10:5000".parse().unwrap());
        assert!(auth.check_head(&direct.to_http_request()).is_ok());

        let outside = TestRequest::post().peer_addr("198.51.100.1:5000".parse().unwrap());
        assert!(auth.check_head(&outside.to_http_request()).is_err());

        let proxied = TestRequest::post()
            .peer_addr("127.0.0.1:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "198.51.100.1, 192.0.2.10"));
        assert!(auth.check_head(&proxied.to_http_request()).is_ok());

        let no_peer = TestRequest::post();
        assert!(auth.check_head(&no_peer.to_http_request()).is_err());
    }

    #[test]
    fn config_errors_name_the_key() {
        type Customize = fn(&mut AuthSettings);
        let cases: [(Customize, &str); 4] = [
            (|s| s.tokens = vec![Secret::new("")], "auth.tokens"),
            (
                |s| s.signing_secrets = vec![Secret::new("whsec_@@")],
                "auth.signing_secrets",
            ),
            (
                |s| s.allowed_networks = vec!["10.0.0.0/40".into()],
                "auth.allowed_networks",
            ),
            (
                |s| s.trusted_proxies = vec!["proxy".into()],
                "auth.trusted_proxies",
            ),
        ];
        for (customize, key) in cases {
            let mut settings = AuthSettings::default();
            customize(&mut settings);
            let error = Authenticator::new(&settings).err().unwrap();
            assert_eq!(error.key, key);
        }
    }
}
