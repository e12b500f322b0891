//! Durations written the way Kubernetes users write them: `60s`, `200ms`, `1m30s`, `1.5h`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration in Go's `time.ParseDuration` syntax (units `h`, `m`, `s`, `ms`,
/// `us`/`µs`, `ns`; fractions allowed), serialized back in its shortest such form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was refused; the text says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a duration ({reason}); write a number and a unit such as 500ms, 5s, 1m30s or 2h"
)]
pub struct ParseDurationError {
    pub input: String,
    pub reason: &'static str,
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

const UNITS: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseDurationError {
            input: input.to_owned(),
            reason,
        };
        if input == "0" {
            return Ok(Self::default());
        }
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        if input.starts_with('-') {
            return Err(err("it is negative"));
        }
        let mut rest = input;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let digits_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let number = &rest[..digits_end];
            if number.is_empty() || number == "." || number.matches('.').count() > 1 {
                return Err(err("a number is missing or malformed"));
            }
            rest = &rest[digits_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_end];
            rest = &rest[unit_end..];
            if unit.is_empty() {
                return Err(err("a unit is missing"));
            }
            let scale = UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, scale)| *scale)
                .ok_or_else(|| err("unknown unit"))?;
            let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
            let whole: u128 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| err("a number is too large"))?
            };
            let mut nanos = whole
                .checked_mul(scale)
                .ok_or_else(|| err("it is too large"))?;
            // Fractions are exact to the nanosecond; digits beyond that are dropped.
            let mut place = scale;
            for digit in frac.bytes().take(30) {
                place /= 10;
                nanos += u128::from(digit - b'0') * place;
            }
            total_nanos = total_nanos
                .checked_add(nanos)
                .ok_or_else(|| err("it is too large"))?;
        }
        let secs =
            u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("it is too large"))?;
        Ok(Self(std::time::Duration::new(
            secs,
            (total_nanos % 1_000_000_000) as u32,
        )))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000_000_000 {
            return if nanos.is_multiple_of(1_000_000) {
                write!(f, "{}ms", nanos / 1_000_000)
            } else if nanos.is_multiple_of(1_000) {
                write!(f, "{}us", nanos / 1_000)
            } else {
                write!(f, "{nanos}ns")
            };
        }
        let hours = nanos / 3_600_000_000_000;
        let minutes = nanos / 60_000_000_000 % 60;
        let sec_nanos = nanos % 60_000_000_000;
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        if sec_nanos > 0 {
            let secs = sec_nanos / 1_000_000_000;
            let frac = sec_nanos % 1_000_000_000;
            if frac == 0 {
                write!(f, "{secs}s")?;
            } else {
                let digits = format!("{frac:09}");
                write!(f, "{secs}.{}s", digits.trim_end_matches('0'))?;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Go's duration syntax as a JSON Schema pattern, so an API server refuses what
/// [`Duration::from_str`] would refuse before any controller sees it.
#[cfg(feature = "schemars")]
pub const DURATION_PATTERN: &str = r"^(0|(([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$";

#[cfg(feature = "schemars")]
impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> std::time::Duration {
        s.parse::<Duration>().unwrap().0
    }

    #[test]
    fn parses_go_syntax() {
        assert_eq!(d("60s"), std::time::Duration::from_secs(60));
        assert_eq!(d("200ms"), std::time::Duration::from_millis(200));
        assert_eq!(d("1m30s"), std::time::Duration::from_secs(90));
        assert_eq!(d("1.5h"), std::time::Duration::from_secs(5400));
        assert_eq!(d("2h45m"), std::time::Duration::from_secs(9900));
        assert_eq!(d("1.5s"), std::time::Duration::from_millis(1500));
        assert_eq!(d(".5s"), std::time::Duration::from_millis(500));
        assert_eq!(d("10us"), std::time::Duration::from_micros(10));
        assert_eq!(d("10µs"), std::time::Duration::from_micros(10));
        assert_eq!(d("7ns"), std::time::Duration::from_nanos(7));
        assert_eq!(d("0"), std::time::Duration::ZERO);
    }

    #[test]
    fn refuses_bad_input_with_reason() {
        for (bad, reason) in [
            ("", "empty"),
            ("60", "unit is missing"),
            ("5 s", "unknown unit"),
            ("5sec", "unknown unit"),
            ("-5s", "negative"),
            ("s", "number"),
            ("1..2s", "number"),
            ("1d", "unknown unit"),
            ("99999999999999999999999999h", "too large"),
        ] {
            let e = bad.parse::<Duration>().unwrap_err();
            assert!(e.reason.contains(reason), "{bad:?}: {e}");
            assert!(e.to_string().contains("such as 500ms"), "{e}");
        }
    }

    #[test]
    fn displays_shortest_form_that_round_trips() {
        for (text, shown) in [
            ("60s", "1m"),
            ("90s", "1m30s"),
            ("200ms", "200ms"),
            ("1.5s", "1.5s"),
            ("1h0m5s", "1h5s"),
            ("3h", "3h"),
            ("0s", "0s"),
            ("1500us", "1500us"),
            ("12ns", "12ns"),
        ] {
            let parsed: Duration = text.parse().unwrap();
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(shown.parse::<Duration>().unwrap(), parsed);
        }
    }

    #[test]
    fn serde_as_string() {
        let v: Duration = serde_json::from_str("\"5s\"").unwrap();
        assert_eq!(v, Duration::from_secs(5));
        assert_eq!(
            serde_json::to_string(&Duration::from_millis(250)).unwrap(),
            "\"250ms\""
        );
        let e = serde_json::from_str::<Duration>("\"5x\"").unwrap_err();
        assert!(e.to_string().contains("\"5x\" is not a duration"), "{e}");
        assert!(serde_json::from_str::<Duration>("5").is_err());
    }
}
