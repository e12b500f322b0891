//! Field rules shared by every wire type, and the error that names the offending field.

use std::fmt;

/// Upper bound of any latency figure, in milliseconds (the seed data model's CHECK).
pub const MAX_LATENCY_MS: f64 = 10_000.0;
/// Most samples one batch may carry.
pub const MAX_SAMPLES_PER_BATCH: usize = 5_000;
/// How far in the future a sample's time may lie, allowing for clock skew between nodes.
pub const MAX_FUTURE_SKEW_SECS: i64 = 5 * 60;
/// Longest node, region or probe name (a Kubernetes DNS subdomain is at most 253).
pub const MAX_NAME_LEN: usize = 253;
/// Longest target name (a Kubernetes DNS label is at most 63).
pub const MAX_TARGET_NAME_LEN: usize = 63;
/// Longest `address` (a URL with a path fits).
pub const MAX_ADDRESS_LEN: usize = 2_048;
/// Longest `error` text.
pub const MAX_ERROR_LEN: usize = 1_024;
/// Largest `metadata` object, serialized as JSON.
pub const MAX_METADATA_BYTES: usize = 8_192;

/// A value that breaks a rule: `field` is a path such as `samples[3].latency_ms`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Places the error under a parent path: `latency_ms` within `samples[3]` becomes
    /// `samples[3].latency_ms`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

pub(crate) type Result<T = ()> = std::result::Result<T, ValidationError>;

/// A non-empty name of at most `max` characters without control characters or surrounding
/// whitespace.
pub(crate) fn name(field: &str, value: &str, max: usize) -> Result {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    let len = value.chars().count();
    if len > max {
        return Err(ValidationError::new(
            field,
            format!("is {len} characters long, at most {max} are allowed"),
        ));
    }
    if value.trim() != value {
        return Err(ValidationError::new(
            field,
            format!("{value:?} has leading or trailing whitespace"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            format!("{value:?} contains a control character"),
        ));
    }
    Ok(())
}

/// Free text of at most `max` characters (may be empty).
pub(crate) fn text(field: &str, value: &str, max: usize) -> Result {
    let len = value.chars().count();
    if len > max {
        return Err(ValidationError::new(
            field,
            format!("is {len} characters long, at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// An ISO 3166-1 alpha-2 code: exactly two ASCII capital letters.
pub(crate) fn country(field: &str, value: &str) -> Result {
    if value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "{value:?} is not an ISO 3166-1 alpha-2 country code (two capital letters, such as GH)"
            ),
        ))
    }
}

/// A finite number within `min..=max`; `unit` is appended to the bounds in the message.
pub(crate) fn range(field: &str, value: f64, min: f64, max: f64, unit: &str) -> Result {
    if !value.is_finite() {
        return Err(ValidationError::new(
            field,
            format!("{value} is not a finite number"),
        ));
    }
    if value < min || value > max {
        return Err(ValidationError::new(
            field,
            format!("{value} is out of range, expected {min} to {max}{unit}"),
        ));
    }
    Ok(())
}

pub(crate) fn latency(field: &str, value: f64) -> Result {
    range(field, value, 0.0, MAX_LATENCY_MS, " ms")
}

pub(crate) fn percent(field: &str, value: f64) -> Result {
    range(field, value, 0.0, 100.0, " %")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_builds_paths() {
        let e = ValidationError::new("latency_ms", "bad").within("samples[3]");
        assert_eq!(e.field, "samples[3].latency_ms");
        let e = ValidationError::new("[2]", "bad").within("targets");
        assert_eq!(e.field, "targets[2]");
        let e = ValidationError::new("", "bad").within("node");
        assert_eq!(e.field, "node");
        assert_eq!(e.to_string(), "node: bad");
    }

    #[test]
    fn names() {
        assert!(name("node", "gh-accra-1", MAX_NAME_LEN).is_ok());
        assert_eq!(
            name("node", "", 10).unwrap_err().message,
            "must not be empty"
        );
        let long = "a".repeat(11);
        assert!(
            name("node", &long, 10)
                .unwrap_err()
                .message
                .contains("at most 10")
        );
        assert!(
            name("node", " x", 10)
                .unwrap_err()
                .message
                .contains("whitespace")
        );
        assert!(
            name("node", "a\nb", 10)
                .unwrap_err()
                .message
                .contains("control")
        );
    }

    #[test]
    fn countries() {
        assert!(country("country", "GH").is_ok());
        for bad in ["gh", "GHA", "G", "", "G1", "ÀB"] {
            let e = country("country", bad).unwrap_err();
            assert_eq!(e.field, "country");
            assert!(e.message.contains("alpha-2"), "{bad}: {e}");
        }
    }

    #[test]
    fn ranges() {
        assert!(latency("l", 0.0).is_ok());
        assert!(latency("l", 10_000.0).is_ok());
        assert!(
            latency("l", 10_000.1)
                .unwrap_err()
                .message
                .contains("0 to 10000 ms")
        );
        assert!(latency("l", -0.5).is_err());
        assert!(
            latency("l", f64::NAN)
                .unwrap_err()
                .message
                .contains("finite")
        );
        assert!(percent("p", 100.0).is_ok());
        assert!(
            percent("p", 100.01)
                .unwrap_err()
                .message
                .contains("0 to 100 %")
        );
        assert!(percent("p", f64::INFINITY).is_err());
    }
}
