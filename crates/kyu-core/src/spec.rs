//! An enqueue request ([`JobSpec`], as sent by a producer) and its validated
//! form ([`NewJob`], what a store inserts).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Backoff, JobId, Millis, QueueName, validate};

/// Default attempts per job.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 5;
/// Most dependencies one job may name.
pub const MAX_DEPENDENCIES: usize = 10_000;
/// Most tags one job may carry.
pub const MAX_TAGS: usize = 32;

/// Size limits a server enforces; the defaults match DESIGN.md.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest payload, in bytes of its JSON text.
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_payload_bytes: 1 << 20 }
    }
}

/// An enqueue request as producers send it. Unknown fields are refused so a
/// misspelt `max_atempts` is an error rather than silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Caller-chosen id; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Queue; `"default"` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Handler name.
    pub kind: String,
    /// Input; `null` when absent.
    #[serde(default)]
    pub payload: Value,
    /// Higher runs first.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::wire::opt_i32")]
    pub priority: Option<i32>,
    /// Absolute earliest start (RFC 3339). Exclusive with `delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// Relative earliest start. Exclusive with `run_at`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::wire::opt_i64")]
    pub delay_ms: Option<i64>,
    /// Attempts allowed (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::wire::opt_i32")]
    pub max_attempts: Option<i32>,
    /// Retry delay policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Per-attempt time limit.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::wire::opt_i64")]
    pub timeout_ms: Option<i64>,
    /// Deduplication key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// Window of the key, from enqueue.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::wire::opt_i64")]
    pub unique_for_ms: Option<i64>,
    /// Ids this job waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "crate::wire::null_default")]
    pub depends_on: Vec<String>,
    /// Run even when a dependency fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not", deserialize_with = "crate::wire::null_default")]
    pub continue_on_failure: bool,
    /// How long to keep the job once completed.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::wire::opt_i64")]
    pub keep_result_ms: Option<i64>,
    /// How long to keep the job once failed or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::wire::opt_i64")]
    pub keep_failed_ms: Option<i64>,
    /// Free labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "crate::wire::null_default")]
    pub tags: Vec<String>,
    /// Fairness key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A validated enqueue request, ready to insert. The payload is already JSON
/// text: it is serialised once, here, where its size is checked.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    /// Id (generated if the caller gave none).
    pub id: JobId,
    /// Queue.
    pub queue: QueueName,
    /// Handler name.
    pub kind: String,
    /// JSON text of the payload.
    pub payload: String,
    /// Priority.
    pub priority: i32,
    /// Earliest start.
    pub run_at: Millis,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Retry policy.
    pub backoff: Backoff,
    /// Per-attempt limit.
    pub timeout_ms: Option<i64>,
    /// Deduplication key.
    pub unique_key: Option<String>,
    /// Key window.
    pub unique_for_ms: Option<i64>,
    /// Dependencies (deduplicated, in the order given).
    pub depends_on: Vec<JobId>,
    /// Run despite failed dependencies.
    pub continue_on_failure: bool,
    /// Retention of a completed job.
    pub keep_result_ms: Option<i64>,
    /// Retention of a failed or cancelled job.
    pub keep_failed_ms: Option<i64>,
    /// Labels.
    pub tags: Vec<String>,
    /// Fairness key.
    pub group: Option<String>,
}

/// Why an enqueue request was refused. The message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The offending field (`payload`, `queue`, `depends_on[2]`, ...).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// The value is over a size limit (HTTP 413 rather than 422).
    pub too_large: bool,
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError { field: field.into(), message: message.into(), too_large: false }
    }

    /// Builds a size-limit error for `field`.
    pub fn too_large(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError { too_large: true, ..ValidationError::new(field, message) }
    }
}

impl JobSpec {
    /// A spec for `kind` on `queue` with `payload`; the other fields default.
    pub fn new(queue: &str, kind: &str, payload: Value) -> JobSpec {
        JobSpec { queue: Some(queue.into()), kind: kind.into(), payload, ..JobSpec::default() }
    }

    /// Checks every field and fills in defaults relative to `now`.
    pub fn validate(self, now: Millis, limits: &Limits) -> Result<NewJob, ValidationError> {
        let id = match self.id {
            Some(id) => JobId::new(id).map_err(|m| ValidationError::new("id", m))?,
            None => JobId::generate(),
        };
        let queue = match self.queue {
            Some(q) => QueueName::new(q).map_err(|m| ValidationError::new("queue", m))?,
            None => QueueName::default(),
        };
        validate::name("kind", &self.kind)?;
        validate::no_nul("payload", &self.payload)?;
        let payload = serde_json::to_string(&self.payload).map_err(|e| ValidationError::new("payload", e.to_string()))?;
        if payload.len() > limits.max_payload_bytes {
            return Err(ValidationError::too_large(
                "payload",
                format!("{} bytes is over the limit of {} bytes", payload.len(), limits.max_payload_bytes),
            ));
        }
        let run_at = match (self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => return Err(ValidationError::new("run_at", "give run_at or delay_ms, not both")),
            (Some(at), None) => {
                validate::timestamp("run_at", Millis::parse(&at).map_err(|m| ValidationError::new("run_at", m))?)?
            }
            (None, Some(d)) => now.plus_ms(validate::duration("delay_ms", d)?),
            (None, None) => now,
        };
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=10_000).contains(&max_attempts) {
            return Err(ValidationError::new("max_attempts", "must be between 1 and 10000"));
        }
        let backoff = self.backoff.unwrap_or_default();
        backoff.check()?;
        if let Some(t) = self.timeout_ms {
            validate::positive_duration("timeout_ms", t)?;
        }
        validate::opt_duration("unique_for_ms", self.unique_for_ms)?;
        validate::opt_duration("keep_result_ms", self.keep_result_ms)?;
        validate::opt_duration("keep_failed_ms", self.keep_failed_ms)?;
        if self.unique_for_ms.is_some() && self.unique_key.is_none() {
            return Err(ValidationError::new("unique_for_ms", "needs a unique_key"));
        }
        if let Some(k) = &self.unique_key {
            validate::label("unique_key", k)?;
        }
        if let Some(g) = &self.group {
            validate::label("group", g)?;
        }
        if self.tags.len() > MAX_TAGS {
            return Err(ValidationError::new("tags", format!("at most {MAX_TAGS} tags")));
        }
        for (i, t) in self.tags.iter().enumerate() {
            validate::label(&format!("tags[{i}]"), t)?;
        }
        if self.depends_on.len() > MAX_DEPENDENCIES {
            return Err(ValidationError::new("depends_on", format!("at most {MAX_DEPENDENCIES} dependencies")));
        }
        let mut depends_on: Vec<JobId> = Vec::with_capacity(self.depends_on.len());
        for (i, d) in self.depends_on.into_iter().enumerate() {
            // A job naming itself names a job that does not exist yet: the
            // store refuses it as it refuses any unknown dependency (404).
            let d = JobId::new(d).map_err(|m| ValidationError::new(format!("depends_on[{i}]"), m))?;
            if !depends_on.contains(&d) {
                depends_on.push(d);
            }
        }
        Ok(NewJob {
            id,
            queue,
            kind: self.kind,
            payload,
            priority: self.priority.unwrap_or(0),
            run_at,
            max_attempts,
            backoff,
            timeout_ms: self.timeout_ms,
            unique_key: self.unique_key,
            unique_for_ms: self.unique_for_ms,
            depends_on,
            continue_on_failure: self.continue_on_failure,
            keep_result_ms: self.keep_result_ms,
            keep_failed_ms: self.keep_failed_ms,
            tags: self.tags,
            group: self.group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Result<NewJob, ValidationError> {
        serde_json::from_value::<JobSpec>(v).unwrap().validate(Millis(1000), &Limits::default())
    }

    #[test]
    fn defaults() {
        let j = spec(json!({"kind": "k"})).unwrap();
        assert_eq!(j.queue.as_str(), "default");
        assert_eq!(j.payload, "null");
        assert_eq!((j.priority, j.max_attempts, j.run_at), (0, 5, Millis(1000)));
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (json!({"kind": "k", "queue": "bad queue"}), "queue"),
            (json!({"kind": "no spaces"}), "kind"),
            (json!({"kind": "k", "id": "a/b"}), "id"),
            (json!({"kind": "k", "delay_ms": -1}), "delay_ms"),
            (json!({"kind": "k", "run_at": "soon"}), "run_at"),
            (json!({"kind": "k", "run_at": "2026-01-01T00:00:00Z", "delay_ms": 5}), "run_at"),
            (json!({"kind": "k", "max_attempts": 0}), "max_attempts"),
            (json!({"kind": "k", "timeout_ms": 0}), "timeout_ms"),
            (json!({"kind": "k", "unique_for_ms": 5}), "unique_for_ms"),
            (json!({"kind": "k", "backoff": {"kind": "fixed", "delay_ms": -5}}), "backoff.delay_ms"),
            (json!({"kind": "k", "delay_ms": i64::MAX}), "delay_ms"),
            (json!({"kind": "k", "run_at": "1969-12-31T23:59:59Z"}), "run_at"),
            (json!({"kind": "k", "timeout_ms": i64::MAX}), "timeout_ms"),
            (json!({"kind": "k", "keep_result_ms": i64::MAX}), "keep_result_ms"),
            (json!({"kind": "k", "unique_key": "u", "unique_for_ms": -1}), "unique_for_ms"),
            (json!({"kind": "k", "backoff": {"kind": "exponential", "base_ms": 1, "max_ms": i64::MAX}}), "backoff.max_ms"),
            (json!({"kind": "k", "payload": {"a": "\u{0}"}}), "payload.a"),
        ];
        for (input, field) in cases {
            assert_eq!(spec(input.clone()).unwrap_err().field, field, "{input}");
        }
    }

    #[test]
    fn payload_limit_and_unknown_fields() {
        let big = "x".repeat(2 << 20);
        assert_eq!(spec(json!({"kind": "k", "payload": big})).unwrap_err().field, "payload");
        assert!(serde_json::from_value::<JobSpec>(json!({"kind": "k", "max_atempts": 3})).is_err());
    }

    #[test]
    fn delay_and_dedup_of_dependencies() {
        let j = spec(json!({"kind": "k", "delay_ms": 500, "depends_on": ["a", "b", "a"]})).unwrap();
        assert_eq!(j.run_at, Millis(1500));
        assert_eq!(j.depends_on.len(), 2);
    }
}
