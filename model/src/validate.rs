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
/// Largest packet count (`sent`, `received`): the database stores them as `integer`.
pub const MAX_COUNT: u32 = i32::MAX as u32;

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

/// Free text of at most `max` characters (may be empty) that the database can store.
pub(crate) fn text(field: &str, value: &str, max: usize) -> Result {
    let len = value.chars().count();
    if len > max {
        return Err(ValidationError::new(
            field,
            format!("is {len} characters long, at most {max} are allowed"),
        ));
    }
    storable(field, value)
}

/// Refuses a NUL character (U+0000): PostgreSQL stores none in `text` or `jsonb`, so a
/// string holding one could be accepted but never stored. Other control characters are
/// stored as sent.
fn storable(field: &str, value: &str) -> Result {
    match value.chars().position(|c| c == '\0') {
        None => Ok(()),
        Some(at) => Err(ValidationError::new(
            field,
            format!(
                "contains a NUL character (U+0000) at character {at}, which cannot be stored; \
                 leave it out or escape it"
            ),
        )),
    }
}

/// A JSON value the database can store in `jsonb`: no NUL character in any string or
/// object key, at any depth. A nested value is named by its path: `metadata.answers[2]`.
pub(crate) fn json(field: &str, value: &serde_json::Value) -> Result {
    use serde_json::Value;
    match value {
        Value::String(s) => storable(field, s),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| json(&format!("{field}[{i}]"), item)),
        Value::Object(map) => json_object(field, map),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// [`json`] of an object: its keys and values.
pub(crate) fn json_object(field: &str, map: &serde_json::Map<String, serde_json::Value>) -> Result {
    map.iter().try_for_each(|(key, value)| {
        storable(field, key)
            .map_err(|e| ValidationError::new(field, format!("key {key:?} {}", e.message)))?;
        json(&format!("{field}.{key}"), value)
    })
}

/// A packet count that fits the database's `integer` column.
pub(crate) fn count(field: &str, value: u32) -> Result {
    if value > MAX_COUNT {
        return Err(ValidationError::new(
            field,
            format!("{value} is out of range, expected 0 to {MAX_COUNT}"),
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
    fn text_refuses_only_what_cannot_be_stored() {
        assert!(text("error", "line 1\nline 2\ttab \u{1b}[0m", 100).is_ok());
        let e = text("error", "ab\0c", 100).unwrap_err();
        assert_eq!(e.field, "error");
        assert!(
            e.message.contains("NUL") && e.message.contains("character 2"),
            "{e}"
        );
        assert!(text("error", "\0", 100).is_err());
        assert!(name("node", "a\0b", 10).is_err());
    }

    #[test]
    fn json_names_the_path_of_a_nul() {
        let ok = serde_json::json!({"a": [1, "x", {"b": null}], "c": true});
        assert!(json("metadata", &ok).is_ok());
        let nested = serde_json::json!({"dns": {"answers": ["1.1.1.1", "a\u{0}b"]}});
        let e = json("metadata", &nested).unwrap_err();
        assert_eq!(e.field, "metadata.dns.answers[1]", "{e}");
        assert!(e.message.contains("NUL"), "{e}");
        let key = serde_json::json!({"ok": 1, "bad\u{0}key": 2});
        let e = json("metadata", &key).unwrap_err();
        assert_eq!(e.field, "metadata");
        assert!(
            e.message.starts_with("key \"bad\\0key\" contains a NUL"),
            "{e}"
        );
    }

    #[test]
    fn counts_fit_an_integer_column() {
        assert!(count("sent", 0).is_ok());
        assert!(count("sent", i32::MAX as u32).is_ok());
        let e = count("sent", 1 << 31).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sent: 2147483648 is out of range, expected 0 to 2147483647"
        );
        assert!(count("received", u32::MAX).is_err());
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
