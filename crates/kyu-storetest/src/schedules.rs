//! Schedules: storage, the compare-and-set that moves them on, and the
//! scheduler firing each tick exactly once however many nodes run it.

use kyu_core::schedule::CronSchedule;
use kyu_core::{JobSpec, ScheduleSpec};
use kyu_store::{JobListParams, ScheduleAdvanceParams, SchedulePutParams, Store, StoreError};
use serde_json::json;

use crate::support::q;

fn spec(cron: &str, queue: &str, catchup: bool) -> ScheduleSpec {
    ScheduleSpec { cron: cron.into(), timezone: None, job: JobSpec::new(queue, "tick", json!({"from": "cron"})), catchup, enabled: true }
}

async fn put<S: Store>(s: &S, name: &str, sp: ScheduleSpec) -> kyu_core::Schedule {
    let next = if sp.enabled { CronSchedule::parse(&sp.cron, "UTC").unwrap().next_after(s.clock().now()) } else { None };
    s.schedule_put(SchedulePutParams { name: name.into(), spec: sp, next_run_at: next }).await.unwrap()
}

pub async fn schedule_crud_and_advance<S: Store>(s: S) {
    let created = put(&s, "five", spec("*/5 * * * *", "cron", false)).await;
    assert_eq!((created.name.as_str(), created.timezone.as_str(), created.enabled), ("five", "UTC", true));
    let next = created.next_run_at.expect("an enabled schedule has a next tick");
    assert!(next > s.clock().now());
    assert_eq!(s.schedule_get("five").await.unwrap().unwrap(), created);
    assert_eq!(s.schedule_list().await.unwrap().len(), 1);

    let later = next.plus_ms(300_000);
    let adv = |from| ScheduleAdvanceParams { name: "five".into(), from, to: Some(later), ran_at: Some(next) };
    assert!(!s.schedule_advance(adv(next.plus_ms(1))).await.unwrap(), "a stale read moves nothing");
    assert!(s.schedule_advance(adv(next)).await.unwrap());
    assert!(!s.schedule_advance(adv(next)).await.unwrap(), "only one node moves it on");
    let moved = s.schedule_get("five").await.unwrap().unwrap();
    assert_eq!((moved.next_run_at, moved.last_run_at), (Some(later), Some(next)));

    let mut off = spec("*/5 * * * *", "cron", false);
    off.enabled = false;
    let replaced = put(&s, "five", off).await;
    assert_eq!(replaced.created_at, created.created_at, "replacing keeps the creation time");
    assert_eq!((replaced.next_run_at, replaced.last_run_at, replaced.enabled), (None, Some(next), false));

    s.schedule_delete("five").await.unwrap();
    assert!(s.schedule_get("five").await.unwrap().is_none());
    assert!(matches!(s.schedule_delete("five").await, Err(StoreError::NotFound(_))));
}

pub async fn scheduler_fires_each_tick_once<S: Store>(s: S) {
    put(&s, "every-minute", spec("* * * * *", "cron-once", false)).await;
    let first = put(&s, "every-minute-catchup", spec("* * * * *", "cron-all", true)).await.next_run_at.unwrap();
    // Down for three and a half minutes, then two nodes run the scheduler at once.
    s.clock().advance(210_000);
    // Three or four minute boundaries passed, depending on where in the minute we started.
    let missed = ((s.clock().now().0 - first.0) / 60_000 + 1) as usize;
    let (a, b) = tokio::join!(kyu_worker::scheduler_pass(&s), kyu_worker::scheduler_pass(&s));
    let created = a.unwrap() + b.unwrap();
    let count = |queue: &'static str| {
        let s = s.clone();
        async move { s.job_list(JobListParams { queue: Some(q(queue)), ..Default::default() }).await.unwrap().jobs }
    };
    let once = count("cron-once").await;
    assert_eq!(once.len(), 1, "after downtime, run once, not once per missed tick");
    let all = count("cron-all").await;
    assert_eq!(all.len(), missed, "with catchup, one job per missed tick");
    assert_eq!(created, 1 + missed, "each tick created exactly one job across both nodes");
    assert!(once[0].id.as_str().starts_with("every-minute@"));
    assert_eq!(once[0].payload, json!({"from": "cron"}));
    // Nothing more until the next tick.
    assert_eq!(kyu_worker::scheduler_pass(&s).await.unwrap(), 0);
    s.clock().advance(60_000);
    assert_eq!(kyu_worker::scheduler_pass(&s).await.unwrap(), 2);
}
