//! Byte sizes written as Kubernetes quantities: `64Mi`, `1Gi`, `500k`, `1048576`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A number of bytes, written with an optional binary (`Ki`, `Mi`, `Gi`, `Ti`) or decimal
/// (`k`, `M`, `G`, `T`) suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a byte size ({reason}); write a whole number with an optional suffix such as 512Ki, 64Mi, 1Gi or 500M"
)]
pub struct ParseByteSizeError {
    pub input: String,
    pub reason: &'static str,
}

const SUFFIXES: [(&str, u64); 8] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
];

impl ByteSize {
    pub const fn mebibytes(n: u64) -> Self {
        Self(n << 20)
    }
}

impl FromStr for ByteSize {
    type Err = ParseByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseByteSizeError {
            input: input.to_owned(),
            reason,
        };
        let split = input
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(input.len());
        let (digits, suffix) = input.split_at(split);
        if digits.is_empty() {
            return Err(err("it does not start with a whole number"));
        }
        let number: u64 = digits.parse().map_err(|_| err("the number is too large"))?;
        let scale = if suffix.is_empty() {
            1
        } else {
            SUFFIXES
                .iter()
                .find(|(name, _)| *name == suffix)
                .map(|(_, scale)| *scale)
                .ok_or_else(|| err("unknown suffix"))?
        };
        number
            .checked_mul(scale)
            .map(Self)
            .ok_or_else(|| err("it is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, scale) in SUFFIXES[..4].iter().rev() {
            if self.0 >= *scale && self.0.is_multiple_of(*scale) {
                return write!(f, "{}{suffix}", self.0 / scale);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as 64Mi or a whole number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative, a byte size is not")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!("64Mi".parse::<ByteSize>().unwrap(), ByteSize(64 << 20));
        assert_eq!("1Gi".parse::<ByteSize>().unwrap(), ByteSize(1 << 30));
        assert_eq!("500k".parse::<ByteSize>().unwrap(), ByteSize(500_000));
        assert_eq!("3M".parse::<ByteSize>().unwrap(), ByteSize(3_000_000));
        assert_eq!("1048576".parse::<ByteSize>().unwrap(), ByteSize(1 << 20));
    }

    #[test]
    fn refuses_bad_input() {
        for (bad, reason) in [
            ("", "whole number"),
            ("Mi", "whole number"),
            ("64MB", "unknown suffix"),
            ("1.5Gi", "unknown suffix"),
            ("-1", "whole number"),
            ("99999999999Ti", "too large"),
        ] {
            let e = bad.parse::<ByteSize>().unwrap_err();
            assert!(e.reason.contains(reason), "{bad:?}: {e}");
        }
    }

    #[test]
    fn displays_and_round_trips() {
        assert_eq!(ByteSize(64 << 20).to_string(), "64Mi");
        assert_eq!(ByteSize(1536).to_string(), "1536");
        assert_eq!(ByteSize(3 << 10).to_string(), "3Ki");
        let yaml = serde_yaml::to_string(&ByteSize(1 << 30)).unwrap();
        assert_eq!(yaml.trim(), "1Gi");
        assert_eq!(
            serde_yaml::from_str::<ByteSize>("1Gi").unwrap(),
            ByteSize(1 << 30)
        );
        assert_eq!(
            serde_yaml::from_str::<ByteSize>("4096").unwrap(),
            ByteSize(4096)
        );
        assert!(
            serde_yaml::from_str::<ByteSize>("-5")
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
    }
}
