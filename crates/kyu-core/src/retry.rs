//! Retry backoff: a pure function from attempt number to delay.

use serde::{Deserialize, Serialize};

use crate::{ValidationError, validate};

/// How long to wait before the next attempt after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Backoff {
    /// `base_ms * 2^(attempt-1)`, capped at `max_ms`, then ±20 % jitter so a
    /// burst of failures does not retry in lockstep.
    Exponential {
        /// Delay after the first failed attempt.
        #[serde(deserialize_with = "crate::wire::i64")]
        base_ms: i64,
        /// Upper bound before jitter (a `max_ms` below `base_ms` makes every delay `max_ms`).
        #[serde(deserialize_with = "crate::wire::i64")]
        max_ms: i64,
    },
    /// The same delay after every failure.
    Fixed {
        /// The delay.
        #[serde(deserialize_with = "crate::wire::i64")]
        delay_ms: i64,
    },
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Exponential { base_ms: 1000, max_ms: 3_600_000 }
    }
}

impl Backoff {
    /// The delay after failed attempt number `attempt` (1-based).
    pub fn delay_ms(&self, attempt: i32) -> i64 {
        match *self {
            Backoff::Fixed { delay_ms } => delay_ms,
            Backoff::Exponential { base_ms, max_ms } => {
                let exp = attempt.saturating_sub(1).clamp(0, 62) as u32;
                let raw = base_ms.saturating_mul(1i64.checked_shl(exp).unwrap_or(i64::MAX)).min(max_ms);
                let jitter = (raw as f64 * 0.2 * (fastrand::f64() * 2.0 - 1.0)) as i64;
                (raw + jitter).max(0)
            }
        }
    }

    /// Checks the numbers are in range; the error names the bad field.
    pub fn check(&self) -> Result<(), ValidationError> {
        match *self {
            Backoff::Fixed { delay_ms } => validate::duration("backoff.delay_ms", delay_ms).map(|_| ()),
            Backoff::Exponential { base_ms, max_ms } => {
                validate::duration("backoff.base_ms", base_ms)?;
                validate::duration("backoff.max_ms", max_ms).map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_within_jitter_and_caps() {
        let b = Backoff::Exponential { base_ms: 1000, max_ms: 10_000 };
        for (attempt, nominal) in [(1, 1000), (2, 2000), (3, 4000), (4, 8000), (5, 10_000), (40, 10_000)] {
            for _ in 0..50 {
                let d = b.delay_ms(attempt);
                assert!(d >= nominal * 8 / 10 && d <= nominal * 12 / 10, "attempt {attempt}: {d}");
            }
        }
    }

    #[test]
    fn fixed_is_fixed_and_wire_form_is_tagged() {
        let b: Backoff = serde_json::from_str(r#"{"kind":"fixed","delay_ms":250}"#).unwrap();
        assert_eq!(b.delay_ms(7), 250);
        assert_eq!(
            serde_json::to_string(&Backoff::default()).unwrap(),
            r#"{"kind":"exponential","base_ms":1000,"max_ms":3600000}"#
        );
        assert!(serde_json::from_str::<Backoff>(r#"{"kind":"linear"}"#).is_err());
    }
}
