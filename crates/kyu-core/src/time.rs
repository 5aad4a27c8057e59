//! Timestamps as milliseconds since the Unix epoch, shown as RFC 3339.
//!
//! Every timestamp kyu stores or sends is UTC with exactly three fractional
//! digits (`2026-11-21T20:56:58.123Z`). Fixed width matters: SQLite stores
//! them as text, and fixed-width UTC strings sort in time order, so indexes
//! on them work.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub i64);

impl Millis {
    /// This instant plus `ms` milliseconds (saturating).
    pub fn plus_ms(self, ms: i64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// Parses RFC 3339 with any offset, e.g. `2026-11-21T20:56:58Z` or
    /// `2026-11-21T21:56:58.5+01:00`.
    pub fn parse(s: &str) -> Result<Millis, String> {
        let ts: jiff::Timestamp = s
            .parse()
            .map_err(|e| format!("`{s}` is not an RFC 3339 timestamp: {e}"))?;
        Ok(Millis(ts.as_millisecond()))
    }

    /// The RFC 3339 form, UTC, milliseconds.
    pub fn to_rfc3339(self) -> String {
        let mut out = String::with_capacity(24);
        write_rfc3339(&mut out, self.0);
        out
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Millis::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Formats without going through a calendar library: this runs for every
/// timestamp of every row read, so it is kept allocation-free and branch-light.
/// Years outside 0000–9999 are clamped, since they would break the fixed width.
fn write_rfc3339(out: &mut String, ms: i64) {
    const MIN: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = ms.clamp(MIN, MAX);
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    use fmt::Write;
    let _ = write!(out, "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z");
}

/// Howard Hinnant's `civil_from_days`: days since the epoch to (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Where "now" comes from. Stores take their time from a clock rather than
/// from the database so that both backends agree and tests can move time
/// forward (expire a lease, pass a delay) without sleeping.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { offset_ms: None }
    }

    /// The system clock plus an offset that [`Clock::advance`] moves: for tests.
    pub fn manual() -> Clock {
        Clock { offset_ms: Some(Arc::new(AtomicI64::new(0))) }
    }

    /// The current time.
    pub fn now(&self) -> Millis {
        let sys = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let off = self.offset_ms.as_ref().map_or(0, |o| o.load(Ordering::Relaxed));
        Millis(sys + off)
    }

    /// Moves a manual clock forward. Panics on the system clock, which
    /// cannot be moved: calling it there is a bug in a test.
    pub fn advance(&self, ms: i64) {
        self.offset_ms
            .as_ref()
            .expect("Clock::advance on the system clock")
            .fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_fixed_width_utc() {
        assert_eq!(Millis(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Millis(1_795_294_618_123).to_rfc3339(), "2026-11-21T20:56:58.123Z");
        assert_eq!(Millis(-1).to_rfc3339(), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_offsets_and_round_trips() {
        let m = Millis::parse("2026-11-21T21:56:58.123+01:00").unwrap();
        assert_eq!(m.to_rfc3339(), "2026-11-21T20:56:58.123Z");
        assert!(Millis::parse("yesterday").is_err());
        for ms in [0, 951_782_400_000, 4_102_444_800_000, 1_795_294_618_123] {
            assert_eq!(Millis::parse(&Millis(ms).to_rfc3339()).unwrap(), Millis(ms));
        }
    }

    #[test]
    fn manual_clock_moves() {
        let c = Clock::manual();
        let a = c.now();
        c.advance(60_000);
        assert!(c.now().0 - a.0 >= 60_000);
    }
}
