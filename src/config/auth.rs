//! Settings of the `[auth]` section: who may post callbacks.

use serde::{Deserialize, Serialize};

use super::{ConfigError, strict};
use crate::auth::Authenticator;
use crate::secret::Secret;

/// Longest accepted `auth.timestamp_tolerance_secs` (one hour). A wider window only lets a
/// captured request be replayed for longer, and a clock that is off by more is broken.
pub const MAX_TIMESTAMP_TOLERANCE_SECS: u64 = 60 * 60;

/// Authentication of callback requests. With neither tokens nor signing secrets, anyone who
/// can reach the endpoint may post callbacks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Shared tokens, any of which admits a request: in the path (`<webhook_path>/<token>`),
    /// the `token` query parameter or an `Authorization: Bearer` header. Several allow
    /// rotation without downtime.
    #[serde(deserialize_with = "strict::list")]
    pub tokens: Vec<Secret>,
    /// Standard Webhooks signing secrets (`whsec_<base64>`), any of which may sign a request.
    #[serde(deserialize_with = "strict::list")]
    pub signing_secrets: Vec<Secret>,
    /// Largest accepted distance between `webhook-timestamp` and the bridge's clock, in
    /// seconds, in either direction.
    #[serde(deserialize_with = "strict::whole_number")]
    pub timestamp_tolerance_secs: u64,
    /// Client networks (CIDR blocks or addresses) allowed to post callbacks; empty allows all.
    #[serde(deserialize_with = "strict::list")]
    pub allowed_networks: Vec<String>,
    /// Proxies (CIDR blocks or addresses) whose `X-Forwarded-For` header is believed.
    #[serde(deserialize_with = "strict::list")]
    pub trusted_proxies: Vec<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            signing_secrets: Vec::new(),
            timestamp_tolerance_secs: 300,
            allowed_networks: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl AuthSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let tolerance = self.timestamp_tolerance_secs;
        if tolerance == 0 || tolerance > MAX_TIMESTAMP_TOLERANCE_SECS {
            return Err(ConfigError::new(
                "auth.timestamp_tolerance_secs",
                format!("must be between 1 and {MAX_TIMESTAMP_TOLERANCE_SECS} seconds"),
            ));
        }
        Authenticator::new(self).map(drop)
    }
}
