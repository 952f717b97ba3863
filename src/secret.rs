//! Connection URLs that may carry a password, and secret strings such as tokens. They print,
//! serialise and log with the secret part replaced, so the configuration can be logged as a
//! whole.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

const REDACTED: &str = "***";

/// A URL whose password never appears in `Debug`, `Display` or serialised output.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL without parsing it; `Settings::validate` checks it later.
    pub fn new_unchecked(url: &str) -> Self {
        Self(url.to_owned())
    }

    /// Returns the URL with its password, for handing to a client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Returns the URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// Checks that the URL parses and uses one of `schemes`.
    pub fn require_scheme(&self, schemes: &[&str]) -> Result<(), String> {
        let url = Url::parse(&self.0)
            .map_err(|error| format!("`{}` is not a valid URL: {error}", self.redacted()))?;
        if !schemes.contains(&url.scheme()) {
            return Err(format!(
                "`{}` has scheme `{}`, expected one of: {}",
                self.redacted(),
                url.scheme(),
                schemes.join(", ")
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("`{}` has no host", self.redacted()));
        }
        Ok(())
    }
}

/// Replaces the password of `url`, if any, by `***`. A string that does not parse as a URL
/// with a host is replaced entirely, because its secret parts cannot be identified.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.has_host() => {
            if parsed.password().is_some() {
                // Only fails for URLs that cannot have credentials, which have no password.
                let _ = parsed.set_password(Some(REDACTED));
            }
            parsed.to_string()
        }
        _ => "<unparseable URL>".to_owned(),
    }
}

/// Replaces the password of every `scheme://user:password@host` URL inside `text` by `***`,
/// for error messages of libraries that quote the values they rejected. A password may
/// contain quotes or spaces, so a URL is taken to run to the next URL or line end, and
/// everything between its first `:` and its last `@` is hidden. That can hide more than
/// the password, never less.
pub fn redact_urls_in(text: &str) -> String {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find("://") {
        let (before, after) = rest.split_at(index + 3);
        output.push_str(before);
        let line_end = after.find('\n').unwrap_or(after.len());
        let end = after[..line_end].find("://").map_or(line_end, |next| {
            // Stop before the scheme of the next URL, at the space or quote in front of it.
            after[..next]
                .rfind(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
                .unwrap_or(next)
        });
        let url = &after[..end];
        match (url.find(':'), url.rfind('@')) {
            (Some(colon), Some(at)) if colon < at => {
                output.push_str(&url[..colon]);
                output.push_str(":***");
                output.push_str(&url[at..]);
            }
            _ => output.push_str(url),
        }
        rest = &after[end..];
    }
    output.push_str(rest);
    output
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// A secret string, such as an authentication token or a signing secret, that prints and
/// serialises as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: &str) -> Self {
        Self(value.to_owned())
    }

    /// Returns the secret itself, for comparing or decoding it only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{REDACTED:?}")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted() {
        let url = SecretUrl::new_unchecked("amqp://user:hunter2@broker:5672/%2f");
        assert_eq!(url.redacted(), "amqp://user:***@broker:5672/%2f");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(!url.to_string().contains("hunter2"));
        assert!(!serde_json::to_string(&url).unwrap().contains("hunter2"));
    }

    #[test]
    fn password_only_url_is_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
    }

    #[test]
    fn url_without_password_is_unchanged() {
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
    }

    #[test]
    fn unparseable_url_is_hidden() {
        assert_eq!(redact_url("user:hunter2 at broker"), "<unparseable URL>");
        assert_eq!(redact_url("amqp:guest:hunter2@broker"), "<unparseable URL>");
        assert_eq!(redact_url("not a url hunter2"), "<unparseable URL>");
    }

    #[test]
    fn passwords_in_text_are_redacted() {
        let cases = [
            (
                r#"invalid type: string "redis://:hunter2@cache:6379/0", expected struct"#,
                r#"invalid type: string "redis://:***@cache:6379/0", expected struct"#,
            ),
            (
                "url = \"amqp://app:hunter2@mq:5672/%2f\n",
                "url = \"amqp://app:***@mq:5672/%2f\n",
            ),
            ("amqp://app:pa/ss@mq", "amqp://app:***@mq"),
            (
                "2 | url = 'amqp://app:pa\"SECRET@127.0.0.1:5672/%2f' x",
                "2 | url = 'amqp://app:***@127.0.0.1:5672/%2f' x",
            ),
            ("amqp://app:with space@mq/", "amqp://app:***@mq/"),
            (
                "line amqp://a:x@h\nnext user@host",
                "line amqp://a:***@h\nnext user@host",
            ),
            (
                "two amqp://a:x@h and redis://:y@r",
                "two amqp://a:***@h and redis://:***@r",
            ),
            (
                "no secret in http://host:80/path",
                "no secret in http://host:80/path",
            ),
            ("user only amqp://app@mq/", "user only amqp://app@mq/"),
        ];
        for (text, expected) in cases {
            assert_eq!(redact_urls_in(text), expected);
        }
    }

    #[test]
    fn secret_never_prints() {
        let secret = Secret::new("hunter2-token");
        assert_eq!(format!("{secret:?}"), "\"***\"");
        assert_eq!(secret.to_string(), "***");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"***\"");
        assert_eq!(secret.expose(), "hunter2-token");
    }

    #[test]
    fn scheme_is_checked() {
        let url = SecretUrl::new_unchecked("http://user:hunter2@host");
        let error = url.require_scheme(&["amqp"]).unwrap_err();
        assert!(error.contains("expected one of: amqp"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
