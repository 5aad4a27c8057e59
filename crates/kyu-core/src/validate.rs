//! Bounds every number and string a caller sends must respect before it
//! reaches a store: durations and timestamps in a range both databases can
//! hold, and JSON without the NUL character PostgreSQL cannot store.
//!
//! The same checks run for every entry point (the HTTP API, the Rust API,
//! the CLI), so both backends see only values they store faithfully. A value
//! out of range is refused with the field named, never clamped silently.

use serde_json::Value;

use crate::{Millis, ValidationError};

/// Longest duration anywhere in kyu (a delay, a timeout, a retention, a
/// backoff): 100 years. Any `now + duration` then stays a valid timestamp.
pub const MAX_DURATION_MS: i64 = 100 * 365 * 24 * 3_600_000;

/// Earliest storable timestamp: 1970-01-01T00:00:00Z.
pub const MIN_TIMESTAMP: Millis = Millis(0);
/// Latest storable timestamp: 9999-12-31T23:59:59.999Z (the last one with a
/// four-digit year, which keeps the text form fixed-width and sortable).
pub const MAX_TIMESTAMP: Millis = Millis(253_402_300_799_999);

/// A duration in milliseconds: 0 to [`MAX_DURATION_MS`].
pub fn duration(field: &str, ms: i64) -> Result<i64, ValidationError> {
    if (0..=MAX_DURATION_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(ValidationError::new(field, format!("{ms} is out of range: give 0 to {MAX_DURATION_MS} ms (100 years)")))
    }
}

/// An optional duration.
pub fn opt_duration(field: &str, ms: Option<i64>) -> Result<Option<i64>, ValidationError> {
    ms.map(|v| duration(field, v)).transpose()
}

/// A positive duration (a timeout, a lease): 1 to [`MAX_DURATION_MS`].
pub fn positive_duration(field: &str, ms: i64) -> Result<i64, ValidationError> {
    if ms <= 0 {
        return Err(ValidationError::new(field, format!("{ms} must be > 0")));
    }
    duration(field, ms)
}

/// A timestamp between 1970 and 9999.
pub fn timestamp(field: &str, at: Millis) -> Result<Millis, ValidationError> {
    if (MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&at) {
        Ok(at)
    } else {
        Err(ValidationError::new(field, format!("{} is out of range: give a time between 1970 and 9999", at.0)))
    }
}

/// Refuses JSON holding a NUL character (`\u0000`) in any string or key.
/// PostgreSQL's `jsonb` and `text` cannot store it, and SQLite would; so that
/// both backends behave alike, neither accepts it.
pub fn no_nul(field: &str, v: &Value) -> Result<(), ValidationError> {
    match find_nul(v) {
        None => Ok(()),
        Some(path) => Err(ValidationError::new(
            format!("{field}{path}"),
            "contains a NUL character (\\u0000), which kyu cannot store: remove it, or encode binary data (base64)",
        )),
    }
}

/// Where the first NUL is, as a JSON path suffix (`.a[2]`), or `None`.
fn find_nul(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(String::new()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, x)| find_nul(x).map(|p| format!("[{i}]{p}"))),
        Value::Object(map) => map.iter().find_map(|(k, x)| {
            if k.contains('\0') {
                return Some(format!(".{}", k.replace('\0', "\\u0000")));
            }
            find_nul(x).map(|p| format!(".{k}{p}"))
        }),
        _ => None,
    }
}

/// A free label (a tag, a group, a unique key, a worker name): 1 to 128
/// characters, none of them control characters (NUL included).
pub fn label(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() || value.chars().count() > crate::job::MAX_NAME_LEN || value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            format!("`{}` must be 1-{} characters without control characters", crate::job::truncate(value), crate::job::MAX_NAME_LEN),
        ));
    }
    Ok(())
}

/// A name (a queue, a kind): `[A-Za-z0-9_.:-]{1,128}`.
pub fn name(field: &str, value: &str) -> Result<(), ValidationError> {
    if crate::job::is_name(value) {
        Ok(())
    } else {
        Err(ValidationError::new(field, format!("`{}` must match [A-Za-z0-9_.:-]{{1,128}}", crate::job::truncate(value))))
    }
}

/// Free text used to search (an error's words): no NUL, at most 1,000 characters.
pub fn search_text(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.contains('\0') || value.chars().count() > 1000 {
        return Err(ValidationError::new(field, "must be at most 1000 characters without NUL"));
    }
    Ok(())
}

/// Text meant for people (an error message, a log line) loses its NUL
/// characters rather than its report: a failure must always be recordable.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') { std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}")) } else { std::borrow::Cow::Borrowed(s) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_and_timestamps_are_bounded() {
        assert!(duration("d", 0).is_ok());
        assert!(duration("d", MAX_DURATION_MS).is_ok());
        assert_eq!(duration("delay_ms", i64::MAX).unwrap_err().field, "delay_ms");
        assert!(duration("d", -1).is_err());
        assert!(positive_duration("t", 0).is_err());
        assert!(timestamp("run_at", Millis(-1)).is_err());
        assert!(timestamp("run_at", MAX_TIMESTAMP).is_ok());
        assert_eq!(MAX_TIMESTAMP.to_rfc3339(), "9999-12-31T23:59:59.999Z");
        // The longest delay from the latest plausible "now" stays storable.
        assert!(Millis(4_102_444_800_000).plus_ms(MAX_DURATION_MS) < MAX_TIMESTAMP);
    }

    #[test]
    fn nul_is_found_anywhere_and_named() {
        assert!(no_nul("payload", &json!({"a": [1, "ok"]})).is_ok());
        assert_eq!(no_nul("payload", &json!({"a": [1, "x\u{0}"]})).unwrap_err().field, "payload.a[1]");
        assert_eq!(no_nul("result", &json!("\u{0}")).unwrap_err().field, "result");
        assert_eq!(no_nul("c", &json!({"k\u{0}": 1})).unwrap_err().field, "c.k\\u0000");
        assert_eq!(printable("a\u{0}b"), "a\u{FFFD}b");
    }
}
