//! Units in config values: durations (`"150ms"`, `"2s"`) and sizes (`"1MiB"`).

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A duration with its unit, e.g. `"150ms"`, `"30d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim().chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "duration {text:?} needs a unit, e.g. \"{text}ms\" or \"{text}s\""
        ));
    }
    humantime::parse_duration(text.trim()).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Text(String),
    Number(i64),
}

fn from_raw<E: serde::de::Error>(raw: Raw) -> Result<Duration, E> {
    match raw {
        Raw::Text(text) => parse_duration(&text).map_err(E::custom),
        Raw::Number(n) => Err(E::custom(format!(
            "duration {n} needs a unit: write it as a string such as \"{n}ms\" or \"{n}s\""
        ))),
    }
}

pub mod serde_duration {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        from_raw(Raw::deserialize(d)?)
    }
}

pub mod serde_opt_duration {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        from_raw(Raw::deserialize(d)?).map(Some)
    }

    /// Written back the way it is read (`"1s 500ms"`), for API answers.
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

/// A size in bytes, written as a number of bytes or a string with a unit
/// (`B`, `KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size {text:?}: expected e.g. \"512KiB\" or \"1MiB\""))?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "invalid size {text:?}: unknown unit {other:?} (use B, KB, KiB, MB, MiB, GB or GiB)"
                ));
            }
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

/// A number of bytes, or a string with a unit; answers write the number.
impl utoipa::PartialSchema for ByteSize {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .examples(["512KiB", "1MiB"]),
            )
            .description(Some(
                "bytes, or a number with a unit: B, KB, KiB, MB, MiB, GB, GiB",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ByteSize {}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
            Raw::Number(n) => u64::try_from(n)
                .map(ByteSize)
                .map_err(|_| serde::de::Error::custom("a size cannot be negative")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("150ms"), Ok(Duration::from_millis(150)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("2000").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("2 parsecs").is_err());
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("1MiB"), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse("10KB"), Ok(ByteSize(10_000)));
        assert_eq!(ByteSize::parse("42"), Ok(ByteSize(42)));
        assert!(ByteSize::parse("1 furlong").is_err());
    }
}
