//! The scheduler: fires cron schedules. Any number of nodes may run it.
//!
//! A pass reads the schedules that are due, enqueues one job per due tick
//! with an id derived from the schedule's name and the tick's time, and
//! moves the schedule on with a compare-and-set. Two nodes firing the same
//! tick enqueue the same id (the second creates nothing) and only one of
//! them advances the schedule, so each tick makes exactly one job.

use kyu_core::schedule::{CronSchedule, due_ticks, tick_job_id};
use kyu_core::Limits;
use kyu_store::{JobInsertManyParams, ScheduleAdvanceParams, Store, StoreError};

/// One pass over every schedule; returns how many jobs it created.
pub async fn scheduler_pass<S: Store>(store: &S) -> Result<usize, StoreError> {
    let now = store.clock().now();
    let mut created = 0;
    for s in store.schedule_list().await? {
        let Some(next) = s.next_run_at else { continue };
        if !s.enabled || next > now {
            continue;
        }
        let cron = match CronSchedule::parse(&s.cron, &s.timezone) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(schedule = %s.name, error = %e, "unreadable schedule skipped");
                continue;
            }
        };
        let (due, after) = due_ticks(&cron, next, now, s.catchup);
        let mut jobs = Vec::with_capacity(due.len());
        for tick in &due {
            let mut spec = s.job.clone();
            spec.id = Some(tick_job_id(&s.name, *tick).to_string());
            match spec.validate(now, &Limits::default()) {
                Ok(job) => jobs.push(job),
                Err(e) => tracing::warn!(schedule = %s.name, error = %e, "the job template is invalid"),
            }
        }
        if !jobs.is_empty() {
            let inserted = store.job_insert_many(JobInsertManyParams { jobs }).await?;
            created += inserted.iter().filter(|i| !i.duplicate).count();
        }
        let advanced = store
            .schedule_advance(ScheduleAdvanceParams { name: s.name.clone(), from: next, to: after, ran_at: due.last().copied() })
            .await?;
        if advanced && !due.is_empty() {
            tracing::info!(schedule = %s.name, ticks = due.len(), "schedule fired");
        }
    }
    Ok(created)
}
