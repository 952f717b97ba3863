//! Strict deserializers for configuration values. The config crate converts between types on
//! its own: it rounds `1.7` to 2 and reads `true` or `yes` as 1. These reject such values,
//! so that a mistyped setting stops startup instead of changing meaning.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Error, IntoDeserializer, SeqAccess, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};

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

/// Accepts a list, or a string of items separated by commas, as an environment variable is.
/// Spaces around each item are dropped. An empty string is a list of one empty item, so that
/// validation rejects a variable that is set but empty instead of reading it as no list.
///
/// The config crate can split environment variables itself, but only with `try_parsing`,
/// which would also turn strings such as `42` or `true` into numbers and booleans.
pub fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_any(List(PhantomData))
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

struct List<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for List<T> {
    type Value = Vec<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a list, or a string of items separated by commas")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = sequence.next_element()? {
            items.push(item);
        }
        Ok(items)
    }

    fn visit_str<E: Error>(self, value: &str) -> Result<Vec<T>, E> {
        value
            .split(',')
            .map(|item| T::deserialize(item.trim().into_deserializer()))
            .collect()
    }
}
