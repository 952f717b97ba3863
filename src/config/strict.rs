//! Strict deserializers for configuration values. The config crate converts between types on
//! its own: it rounds `1.7` to 2 and reads `true` or `yes` as 1. These reject such values,
//! so that a mistyped setting stops startup instead of changing meaning.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{Error, Unexpected, Visitor};

/// Accepts a non-negative integer, or a string of one (environment variables are strings).
pub fn whole_number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    deserializer.deserialize_any(WholeNumber(PhantomData))
}

/// Accepts `true` or `false`, as a boolean or a string.
pub fn boolean<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    deserializer.deserialize_any(Boolean)
}

struct WholeNumber<T>(PhantomData<T>);

impl<T: TryFrom<u64>> WholeNumber<T> {
    fn convert<E: Error>(&self, value: u64) -> Result<T, E> {
        T::try_from(value).map_err(|_| E::invalid_value(Unexpected::Unsigned(value), self))
    }
}

impl<T: TryFrom<u64>> Visitor<'_> for WholeNumber<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a whole number of 0 or more")
    }

    fn visit_u64<E: Error>(self, value: u64) -> Result<T, E> {
        self.convert(value)
    }

    fn visit_i64<E: Error>(self, value: i64) -> Result<T, E> {
        let value =
            u64::try_from(value).map_err(|_| E::invalid_value(Unexpected::Signed(value), &self))?;
        self.convert(value)
    }

    fn visit_str<E: Error>(self, value: &str) -> Result<T, E> {
        let number = value
            .parse::<u64>()
            .map_err(|_| E::invalid_value(Unexpected::Str(value), &self))?;
        self.convert(number)
    }
}

struct Boolean;

impl Visitor<'_> for Boolean {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("true or false")
    }

    fn visit_bool<E: Error>(self, value: bool) -> Result<bool, E> {
        Ok(value)
    }

    fn visit_str<E: Error>(self, value: &str) -> Result<bool, E> {
        match value {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(E::invalid_value(Unexpected::Str(other), &self)),
        }
    }
}
