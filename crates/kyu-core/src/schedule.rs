//! Schedules: a cron expression in a time zone, a job template, and the
//! rules for which ticks are due. Pure: the scheduler service and the stores
//! call these.
//!
//! Every tick enqueues a job whose id is derived from the schedule's name and
//! the tick's time. Enqueueing an existing id creates nothing, so however
//! many nodes run the scheduler, each tick makes exactly one job.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::job::is_name;
use crate::{JobId, JobSpec, Limits, Millis, ValidationError};

/// Most missed ticks a catch-up enqueues at once; the rest follow on the
/// next passes.
pub const MAX_CATCHUP: usize = 1000;

fn yes() -> bool {
    true
}

/// `PUT /v1/schedules/{name}`'s body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Five fields (minute hour day month weekday), or six with seconds first.
    pub cron: String,
    /// IANA time zone the expression is read in (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The job each tick enqueues (its `id` is set per tick).
    pub job: JobSpec,
    /// After downtime, enqueue every missed tick (true) or only the latest (false).
    #[serde(default, deserialize_with = "crate::wire::null_default")]
    pub catchup: bool,
    /// Paused schedules keep their definition but enqueue nothing.
    #[serde(default = "yes", deserialize_with = "crate::wire::default_true")]
    pub enabled: bool,
}

/// A stored schedule, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Unique name.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// Its time zone.
    pub timezone: String,
    /// The job template.
    pub job: JobSpec,
    /// Catch up missed ticks.
    pub catchup: bool,
    /// Whether it fires.
    pub enabled: bool,
    /// The next tick (null when disabled).
    pub next_run_at: Option<Millis>,
    /// The last tick that enqueued a job.
    pub last_run_at: Option<Millis>,
    /// When it was first put.
    pub created_at: Millis,
    /// When it was last put.
    pub updated_at: Millis,
}

/// A parsed expression in its zone.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: Cron,
    tz: jiff::tz::TimeZone,
}

impl CronSchedule {
    /// Parses `expr` (5 fields, or 6 with seconds first) in zone `tz`.
    pub fn parse(expr: &str, tz: &str) -> Result<CronSchedule, ValidationError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| ValidationError::new("cron", format!("`{expr}`: {e}")))?;
        let tz = jiff::tz::TimeZone::get(tz).map_err(|e| ValidationError::new("timezone", format!("`{tz}`: {e}")))?;
        Ok(CronSchedule { cron, tz })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        let ts = jiff::Timestamp::from_millisecond(after.0).ok()?;
        let next = self.cron.find_next_occurrence(&ts.to_zoned(self.tz.clone()), false).ok()?;
        Some(Millis(next.timestamp().as_millisecond()))
    }
}

/// Every IANA time zone name a schedule may use (the bundled database).
pub fn time_zone_names() -> Vec<String> {
    let mut names: Vec<String> = jiff::tz::db().available().map(|n| n.to_string()).collect();
    names.sort();
    names
}

/// Checks a schedule's name: `[A-Za-z0-9_.:-]{1,128}`.
pub fn check_name(name: &str) -> Result<(), ValidationError> {
    if is_name(name) { Ok(()) } else { Err(ValidationError::new("name", format!("`{name}` must match [A-Za-z0-9_.:-]{{1,128}}"))) }
}

impl ScheduleSpec {
    /// Checks everything (the cron expression, the zone, the job template)
    /// and returns the parsed expression.
    pub fn check(&self, name: &str, now: Millis, limits: &Limits) -> Result<CronSchedule, ValidationError> {
        check_name(name)?;
        if self.job.id.is_some() {
            return Err(ValidationError::new("job.id", "each tick's job id is derived from the schedule name and tick time"));
        }
        let cron = CronSchedule::parse(&self.cron, self.timezone.as_deref().unwrap_or("UTC"))?;
        self.job.clone().validate(now, limits).map_err(|mut e| {
            e.field = format!("job.{}", e.field);
            e
        })?;
        if cron.next_after(now).is_none() {
            return Err(ValidationError::new("cron", format!("`{}` never fires", self.cron)));
        }
        Ok(cron)
    }
}

/// The job id of `name`'s tick at `tick`.
pub fn tick_job_id(name: &str, tick: Millis) -> JobId {
    JobId::new(format!("{name}@{}", tick.to_rfc3339())).expect("names and timestamps make valid ids")
}

/// Which ticks to enqueue at `now`, given the first unrun tick `next`, and
/// the schedule's new `next_run_at`. Without catch-up, a schedule that missed
/// several ticks runs once, for the latest.
pub fn due_ticks(cron: &CronSchedule, next: Millis, now: Millis, catchup: bool) -> (Vec<Millis>, Option<Millis>) {
    let mut due = Vec::new();
    let mut tick = Some(next);
    while let Some(t) = tick {
        if t > now || due.len() >= MAX_CATCHUP {
            break;
        }
        due.push(t);
        tick = cron.next_after(t);
    }
    if !catchup && due.len() > 1 {
        due.drain(..due.len() - 1);
        tick = cron.next_after(now);
    }
    (due, tick)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Millis {
        Millis::parse(s).unwrap()
    }

    #[test]
    fn five_and_six_fields_and_zones() {
        let every_minute = CronSchedule::parse("* * * * *", "UTC").unwrap();
        assert_eq!(every_minute.next_after(at("2026-11-21T10:00:30Z")), Some(at("2026-11-21T10:01:00Z")));
        let every_5s = CronSchedule::parse("*/5 * * * * *", "UTC").unwrap();
        assert_eq!(every_5s.next_after(at("2026-11-21T10:00:01Z")), Some(at("2026-11-21T10:00:05Z")));
        // 09:00 in Seoul is 00:00 UTC.
        let seoul = CronSchedule::parse("0 9 * * *", "Asia/Seoul").unwrap();
        assert_eq!(seoul.next_after(at("2026-11-21T01:00:00Z")), Some(at("2026-11-22T00:00:00Z")));
        assert_eq!(CronSchedule::parse("61 * * * *", "UTC").unwrap_err().field, "cron");
        assert_eq!(CronSchedule::parse("* * * * *", "Mars/Olympus").unwrap_err().field, "timezone");
    }

    #[test]
    fn missed_ticks_run_once_unless_catching_up() {
        let hourly = CronSchedule::parse("0 * * * *", "UTC").unwrap();
        let next = at("2026-11-21T10:00:00Z");
        let now = at("2026-11-21T13:30:00Z");
        let (due, after) = due_ticks(&hourly, next, now, false);
        assert_eq!(due, vec![at("2026-11-21T13:00:00Z")]);
        assert_eq!(after, Some(at("2026-11-21T14:00:00Z")));
        let (due, after) = due_ticks(&hourly, next, now, true);
        assert_eq!(due.len(), 4);
        assert_eq!(after, Some(at("2026-11-21T14:00:00Z")));
        let (due, _) = due_ticks(&hourly, at("2026-11-21T14:00:00Z"), now, false);
        assert!(due.is_empty());
    }

    #[test]
    fn tick_ids_are_stable() {
        assert_eq!(tick_job_id("nightly", at("2026-11-21T00:00:00Z")).as_str(), "nightly@2026-11-21T00:00:00.000Z");
    }
}
