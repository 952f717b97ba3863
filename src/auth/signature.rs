//! Signatures of the Standard Webhooks specification (<https://www.standardwebhooks.com>):
//! HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, sent in `webhook-signature` as
//! a space-separated list of `v1,<base64>` entries, with a timestamp that must be recent.

use base64::Engine;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

use crate::secret::Secret;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// Prefix of a signing secret in the form that Standard Webhooks providers hand out.
const SECRET_PREFIX: &str = "whsec_";

/// Bounds of a decoded signing secret, from the specification: at least 24 bytes
/// (192 bits), at most 64 (512 bits).
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;

/// Longest accepted `webhook-timestamp`: the digits of `u64::MAX`.
const MAX_TIMESTAMP_DIGITS: usize = 20;

/// Standard base64, with or without `=` padding, since secrets are seen written both ways.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// Reason for a failed signature check, for the log only and never for a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("header {0} is missing or not visible ASCII")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a whole number of seconds")]
    InvalidTimestamp,
    #[error("webhook-timestamp is {skew_secs} s away from the bridge's clock")]
    OutsideTolerance { skew_secs: i128 },
    #[error("webhook-signature holds no v1 signature")]
    NoSignature,
    #[error("no v1 signature matches any signing secret")]
    NoMatch,
}

/// The headers that carry a signature, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signatures: Option<&'a str>,
}

/// The decoded signing secrets.
pub struct SigningKeys {
    keys: Vec<Vec<u8>>,
}

impl SigningKeys {
    /// Decodes `secrets` (`whsec_<base64>`); the error names the entry at fault by its
    /// position from 1, without quoting it.
    pub fn new(secrets: &[Secret]) -> Result<Self, String> {
        let mut keys = Vec::with_capacity(secrets.len());
        for (index, secret) in secrets.iter().enumerate() {
            let key = decode_secret(secret.expose())
                .map_err(|reason| format!("entry {}: {reason}", index + 1))?;
            keys.push(key);
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Checks that `headers` sign `body` with one of the keys, and that the timestamp lies
    /// within `tolerance_secs` of `now_secs` (Unix time) in either direction.
    pub fn verify(
        &self,
        headers: SignedHeaders<'_>,
        body: &[u8],
        now_secs: u64,
        tolerance_secs: u64,
    ) -> Result<(), SignatureError> {
        let checked = check_headers(headers, now_secs, tolerance_secs)?;
        let expected: Vec<[u8; 32]> = self
            .keys
            .iter()
            .map(|key| sign(key, checked.id, checked.timestamp, body))
            .collect();
        let mut matched = Choice::from(0);
        for presented in &checked.signatures {
            for tag in &expected {
                matched |= tag.ct_eq(presented);
            }
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(SignatureError::NoMatch)
        }
    }
}

/// Signature headers that passed the checks which need no body.
pub struct CheckedHeaders<'a> {
    id: &'a str,
    timestamp: &'a str,
    signatures: Vec<[u8; 32]>,
}

/// Checks what can be checked before the body is read: all three headers present, a
/// non-empty id, a timestamp within `tolerance_secs` of `now_secs`, and at least one `v1`
/// signature. A request that fails here is rejected without reading its body.
pub fn check_headers<'a>(
    headers: SignedHeaders<'a>,
    now_secs: u64,
    tolerance_secs: u64,
) -> Result<CheckedHeaders<'a>, SignatureError> {
    let id = headers.id.ok_or(SignatureError::MissingHeader(ID_HEADER))?;
    let timestamp = headers
        .timestamp
        .ok_or(SignatureError::MissingHeader(TIMESTAMP_HEADER))?;
    let signatures = headers
        .signatures
        .ok_or(SignatureError::MissingHeader(SIGNATURE_HEADER))?;
    if id.is_empty() {
        return Err(SignatureError::MissingHeader(ID_HEADER));
    }

    let sent_at = parse_timestamp(timestamp)?;
    let skew_secs = i128::from(now_secs) - i128::from(sent_at);
    if skew_secs.unsigned_abs() > u128::from(tolerance_secs) {
        return Err(SignatureError::OutsideTolerance { skew_secs });
    }

    let signatures: Vec<[u8; 32]> = signatures
        .split(' ')
        .filter_map(decode_v1_signature)
        .collect();
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    Ok(CheckedHeaders {
        id,
        timestamp,
        signatures,
    })
}

/// Computes the HMAC-SHA256 of `{id}.{timestamp}.{body}` with `key`.
fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let Some(encoded) = secret.strip_prefix(SECRET_PREFIX) else {
        return Err(format!(
            "must start with `{SECRET_PREFIX}` followed by the base64 key, as Standard Webhooks providers show it"
        ));
    };
    let key = BASE64.decode(encoded).map_err(|error| {
        format!("the part after `{SECRET_PREFIX}` is not valid base64 ({error})")
    })?;
    if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
        return Err(format!(
            "decodes to {} bytes; the Standard Webhooks specification asks for {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES}",
            key.len()
        ));
    }
    Ok(key)
}

/// Reads a timestamp of decimal digits only: no sign, no fraction, no spaces.
fn parse_timestamp(timestamp: &str) -> Result<u64, SignatureError> {
    let digits_only = !timestamp.is_empty()
        && timestamp.len() <= MAX_TIMESTAMP_DIGITS
        && timestamp.bytes().all(|byte| byte.is_ascii_digit());
    if !digits_only {
        return Err(SignatureError::InvalidTimestamp);
    }
    timestamp
        .parse()
        .map_err(|_| SignatureError::InvalidTimestamp)
}

/// Returns the MAC of a `v1,<base64>` entry. Entries of other versions (such as `v1a`, the
/// asymmetric scheme) and malformed ones are skipped, as the specification lets a sender list
/// signatures that the receiver cannot check.
fn decode_v1_signature(entry: &str) -> Option<[u8; 32]> {
    let encoded = entry.strip_prefix("v1,")?;
    let decoded = BASE64.decode(encoded).ok()?;
    decoded.try_into().ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The test vector of the Standard Webhooks reference libraries, as in
    /// `libraries/go/webhook_test.go` (TestWebhookSign) of github.com/standard-webhooks/standard-webhooks.
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: u64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    /// A valid-looking signature that matches nothing, from the same test file.
    const OTHER_SIGNATURE: &str = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";

    const TOLERANCE: u64 = 300;

    fn keys(secrets: &[&str]) -> Result<SigningKeys, String> {
        let secrets: Vec<Secret> = secrets.iter().map(|secret| Secret::new(secret)).collect();
        SigningKeys::new(&secrets)
    }

    fn headers<'a>(id: &'a str, timestamp: &'a str, signatures: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id: Some(id),
            timestamp: Some(timestamp),
            signatures: Some(signatures),
        }
    }

    fn signature_of(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
        let key = decode_secret(secret).unwrap();
        format!("v1,{}", BASE64.encode(sign(&key, id, timestamp, body)))
    }

    fn verify_vector(signatures: &str, now: u64) -> Result<(), SignatureError> {
        let timestamp = VECTOR_TIMESTAMP.to_string();
        keys(&[VECTOR_SECRET]).unwrap().verify(
            headers(VECTOR_ID, &timestamp, signatures),
            VECTOR_BODY,
            now,
            TOLERANCE,
        )
    }

    #[test]
    fn specification_vector_signs_alike() {
        let timestamp = VECTOR_TIMESTAMP.to_string();
        let signature = signature_of(VECTOR_SECRET, VECTOR_ID, &timestamp, VECTOR_BODY);
        assert_eq!(signature, VECTOR_SIGNATURE);
    }

    #[test]
    fn specification_vector_verifies() {
        assert_eq!(verify_vector(VECTOR_SIGNATURE, VECTOR_TIMESTAMP), Ok(()));
    }

    #[test]
    fn junk_entries_around_a_valid_one_pass() {
        let list = format!(
            "v1,{OTHER_SIGNATURE} v2,{OTHER_SIGNATURE} v1a,{OTHER_SIGNATURE} nonsense v1,!!  {VECTOR_SIGNATURE} v1,{OTHER_SIGNATURE}"
        );
        assert_eq!(verify_vector(&list, VECTOR_TIMESTAMP), Ok(()));
    }

    #[test]
    fn unmatched_signatures_fail() {
        assert_eq!(
            verify_vector(&format!("v1,{OTHER_SIGNATURE}"), VECTOR_TIMESTAMP),
            Err(SignatureError::NoMatch)
        );
        for list in [
            format!("v2,{}", &VECTOR_SIGNATURE[3..]),
            VECTOR_SIGNATURE[3..].to_owned(),
            String::new(),
            " ".to_owned(),
        ] {
            assert_eq!(
                verify_vector(&list, VECTOR_TIMESTAMP),
                Err(SignatureError::NoSignature),
                "{list:?}"
            );
        }
    }

    #[test]
    fn timestamp_tolerance_holds_both_ways() {
        let at = VECTOR_TIMESTAMP;
        assert_eq!(verify_vector(VECTOR_SIGNATURE, at + TOLERANCE), Ok(()));
        assert_eq!(verify_vector(VECTOR_SIGNATURE, at - TOLERANCE), Ok(()));
        assert_eq!(
            verify_vector(VECTOR_SIGNATURE, at + TOLERANCE + 1),
            Err(SignatureError::OutsideTolerance { skew_secs: 301 })
        );
        assert_eq!(
            verify_vector(VECTOR_SIGNATURE, at - TOLERANCE - 1),
            Err(SignatureError::OutsideTolerance { skew_secs: -301 })
        );
    }

    #[test]
    fn malformed_timestamps_fail() {
        let keys = keys(&[VECTOR_SECRET]).unwrap();
        for timestamp in [
            "",
            "+1614265330",
            "-1",
            "1614265330.5",
            " 1614265330",
            "1e9",
            "999999999999999999999",
        ] {
            let result = keys.verify(
                headers(VECTOR_ID, timestamp, VECTOR_SIGNATURE),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                TOLERANCE,
            );
            assert_eq!(
                result,
                Err(SignatureError::InvalidTimestamp),
                "{timestamp:?}"
            );
        }
    }

    #[test]
    fn missing_headers_fail() {
        let keys = keys(&[VECTOR_SECRET]).unwrap();
        let timestamp = VECTOR_TIMESTAMP.to_string();
        let complete = headers(VECTOR_ID, &timestamp, VECTOR_SIGNATURE);
        let cases = [
            (
                SignedHeaders {
                    id: None,
                    ..complete
                },
                ID_HEADER,
            ),
            (
                SignedHeaders {
                    id: Some(""),
                    ..complete
                },
                ID_HEADER,
            ),
            (
                SignedHeaders {
                    timestamp: None,
                    ..complete
                },
                TIMESTAMP_HEADER,
            ),
            (
                SignedHeaders {
                    signatures: None,
                    ..complete
                },
                SIGNATURE_HEADER,
            ),
        ];
        for (headers, missing) in cases {
            let result = keys.verify(headers, VECTOR_BODY, VECTOR_TIMESTAMP, TOLERANCE);
            assert_eq!(result, Err(SignatureError::MissingHeader(missing)));
        }
    }

    #[test]
    fn any_configured_secret_verifies() {
        let other = format!("whsec_{}", BASE64.encode([7u8; 32]));
        let timestamp = VECTOR_TIMESTAMP.to_string();
        let keys = keys(&[&other, VECTOR_SECRET]).unwrap();
        let result = keys.verify(
            headers(VECTOR_ID, &timestamp, VECTOR_SIGNATURE),
            VECTOR_BODY,
            VECTOR_TIMESTAMP,
            TOLERANCE,
        );
        assert_eq!(result, Ok(()));

        let wrong = self::keys(&[&other]).unwrap();
        let result = wrong.verify(
            headers(VECTOR_ID, &timestamp, VECTOR_SIGNATURE),
            VECTOR_BODY,
            VECTOR_TIMESTAMP,
            TOLERANCE,
        );
        assert_eq!(result, Err(SignatureError::NoMatch));
    }

    #[test]
    fn secret_errors_are_precise() {
        let error = keys(&["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).err().unwrap();
        assert!(error.contains("must start with `whsec_`"), "{error}");

        let error = keys(&[VECTOR_SECRET, "whsec_not*base64"]).err().unwrap();
        assert!(error.starts_with("entry 2: "), "{error}");
        assert!(error.contains("not valid base64"), "{error}");
        assert!(!error.contains("not*base64"), "{error}");

        let short = format!("whsec_{}", BASE64.encode([1u8; 23]));
        let error = keys(&[&short]).err().unwrap();
        assert!(error.contains("decodes to 23 bytes"), "{error}");

        let long = format!("whsec_{}", BASE64.encode([1u8; 65]));
        assert!(keys(&[&long]).is_err());
        let unpadded = format!("whsec_{}", BASE64.encode([1u8; 25]).trim_end_matches('='));
        assert!(keys(&[&unpadded]).is_ok());
    }

    proptest! {
        #[test]
        fn any_changed_byte_fails(
            body in prop::collection::vec(any::<u8>(), 1..256),
            id in "[A-Za-z0-9_]{1,40}",
            offset in 0u64..=TOLERANCE,
            part in 0usize..3,
            index in any::<prop::sample::Index>(),
            replacement in any::<u8>(),
        ) {
            let now = VECTOR_TIMESTAMP;
            let timestamp = (now - offset).to_string();
            let signature = signature_of(VECTOR_SECRET, &id, &timestamp, &body);
            let keys = keys(&[VECTOR_SECRET]).unwrap();
            let verify = |id: &str, timestamp: &str, body: &[u8]| {
                keys.verify(headers(id, timestamp, &signature), body, now, TOLERANCE)
            };
            prop_assert_eq!(verify(&id, &timestamp, &body), Ok(()));

            let mut parts = [id.clone().into_bytes(), timestamp.clone().into_bytes(), body.clone()];
            let changed = &mut parts[part];
            let position = index.index(changed.len());
            prop_assume!(changed[position] != replacement);
            changed[position] = replacement;
            let [changed_id, changed_timestamp, changed_body] = parts;
            let changed_id = String::from_utf8_lossy(&changed_id);
            let changed_timestamp = String::from_utf8_lossy(&changed_timestamp);
            // A changed timestamp may also be rejected as malformed or out of tolerance.
            prop_assert!(verify(&changed_id, &changed_timestamp, &changed_body).is_err());
        }

        #[test]
        fn outside_tolerance_fails(excess in 1u64..1_000_000, future in any::<bool>()) {
            let now = if future {
                VECTOR_TIMESTAMP - TOLERANCE - excess
            } else {
                VECTOR_TIMESTAMP + TOLERANCE + excess
            };
            let result = verify_vector(VECTOR_SIGNATURE, now);
            let is_outside = matches!(result, Err(SignatureError::OutsideTolerance { .. }));
            prop_assert!(is_outside);
        }

        #[test]
        fn junk_with_one_valid_entry_passes(
            junk in prop::collection::vec("[ -~]{0,60}", 0..8),
            position in any::<prop::sample::Index>(),
        ) {
            let mut entries: Vec<String> = junk
                .into_iter()
                .map(|entry| entry.replace(' ', ""))
                .collect();
            let at = position.index(entries.len() + 1);
            entries.insert(at, VECTOR_SIGNATURE.to_owned());
            prop_assert_eq!(verify_vector(&entries.join(" "), VECTOR_TIMESTAMP), Ok(()));
        }
    }
}
