//! Shared tokens: their format rules, and a constant-time check of a presented token against
//! every configured one.

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::secret::Secret;

/// Shortest accepted token. 32 characters carry 128 bits when they are random hex digits
/// (`openssl rand -hex 16`), more with a larger alphabet, which puts guessing out of reach
/// even at millions of requests per second.
pub const MIN_TOKEN_CHARS: usize = 32;

/// Longest accepted token, so that a URL with one stays well within common length limits.
pub const MAX_TOKEN_CHARS: usize = 256;

/// The configured tokens, kept as SHA-256 digests. Comparing digests of equal length takes
/// the same time whatever the presented token's length and content.
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl Tokens {
    /// Checks and stores `tokens`; the error names the entry at fault by its position from 1.
    pub fn new(tokens: &[Secret]) -> Result<Self, String> {
        let mut digests = Vec::with_capacity(tokens.len());
        for (index, token) in tokens.iter().enumerate() {
            check_format(token.expose())
                .map_err(|reason| format!("entry {}: {reason}", index + 1))?;
            digests.push(digest(token.expose()));
        }
        Ok(Self { digests })
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Returns whether `candidate` equals one of the tokens. Every token is compared, with no
    /// early exit, so the time taken does not reveal which token matched or how closely.
    pub fn contains(&self, candidate: &str) -> bool {
        let candidate = digest(candidate);
        let mut found = Choice::from(0);
        for token in &self.digests {
            found |= token.ct_eq(&candidate);
        }
        found.into()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Tokens travel in URL paths and query strings unescaped, so they are limited to the
/// characters that need no percent-encoding there (RFC 3986 "unreserved").
fn check_format(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("is empty; leave auth.tokens unset to turn token authentication off".into());
    }
    let unreserved = token
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~'));
    if !unreserved {
        return Err(
            "may contain only letters, digits, `-`, `.`, `_` and `~`, so that it fits in a URL unescaped"
                .into(),
        );
    }
    let length = token.len();
    if !(MIN_TOKEN_CHARS..=MAX_TOKEN_CHARS).contains(&length) {
        return Err(format!(
            "is {length} characters long; use {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} random characters, such as the output of `openssl rand -hex 32`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const OLD: &str = "0123456789abcdef0123456789abcdef";
    const NEW: &str = "fedcba9876543210fedcba9876543210-new";

    fn tokens(values: &[&str]) -> Result<Tokens, String> {
        let secrets: Vec<Secret> = values.iter().map(|value| Secret::new(value)).collect();
        Tokens::new(&secrets)
    }

    #[test]
    fn every_configured_token_matches() {
        let tokens = tokens(&[OLD, NEW]).unwrap();
        assert!(tokens.contains(OLD));
        assert!(tokens.contains(NEW));
        assert_eq!(tokens.len(), 2);
    }

    #[test]
    fn near_misses_do_not_match() {
        let tokens = tokens(&[OLD]).unwrap();
        for candidate in [
            "",
            &OLD[..31],
            &format!("{OLD}0"),
            &OLD.to_uppercase(),
            &format!(" {OLD}"),
        ] {
            assert!(!tokens.contains(candidate), "{candidate:?}");
        }
    }

    #[test]
    fn format_errors_name_the_entry() {
        let error = tokens(&[OLD, ""]).err().unwrap();
        assert!(error.starts_with("entry 2: is empty"), "{error}");

        let error = tokens(&["short"]).err().unwrap();
        assert!(error.contains("is 5 characters long"), "{error}");

        let error = tokens(&[&"a".repeat(257)]).err().unwrap();
        assert!(error.contains("257 characters"), "{error}");

        let error = tokens(&["0123456789abcdef0123456789abcde/"]).err().unwrap();
        assert!(error.contains("may contain only"), "{error}");
        assert!(tokens(&[&"a".repeat(256)]).is_ok());
    }

    #[test]
    fn errors_do_not_quote_the_token() {
        let error = tokens(&["secret-but-short"]).err().unwrap();
        assert!(!error.contains("secret-but-short"), "{error}");
    }

    proptest! {
        #[test]
        fn only_an_exact_token_matches(
            token in "[A-Za-z0-9._~-]{32,64}",
            candidate in "[A-Za-z0-9._~-]{0,64}",
        ) {
            let tokens = tokens(&[&token]).unwrap();
            prop_assert_eq!(tokens.contains(&candidate), candidate == token);
            prop_assert!(tokens.contains(&token));
        }

        #[test]
        fn any_changed_byte_fails(
            token in "[A-Za-z0-9._~-]{32,64}",
            index in any::<prop::sample::Index>(),
            replacement in any::<u8>(),
        ) {
            let tokens = tokens(&[&token]).unwrap();
            let mut changed = token.clone().into_bytes();
            let position = index.index(changed.len());
            prop_assume!(changed[position] != replacement);
            changed[position] = replacement;
            let changed = String::from_utf8_lossy(&changed);
            prop_assert!(!tokens.contains(&changed));
        }
    }
}
