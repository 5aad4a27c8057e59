//! What operators watch: job timelines, workers, per-minute statistics and
//! the live stream of changes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use kyu_core::tally::{Change, Happening, StatsPoint, WorkerInfo};
use kyu_core::timeline::JobEvent;
use kyu_core::{Millis, QueueName};
use kyu_store::{Observer, StatsParams, Store, WorkerSeenParams};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::AppState;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::jobs::job_id;

#[derive(Serialize)]
pub(crate) struct EventList {
    events: Vec<JobEvent>,
}

/// `GET /v1/jobs/{id}/events`: the job's timeline, oldest first.
pub(crate) async fn events<S: Store>(State(app): State<AppState<S>>, Path(id): Path<String>) -> ApiResult<axum::Json<EventList>> {
    Ok(axum::Json(EventList { events: app.store.job_events(&job_id(id)?).await? }))
}

#[derive(Serialize)]
pub(crate) struct WorkerList {
    workers: Vec<WorkerInfo>,
}

/// `GET /v1/workers`: every worker seen in the last few minutes.
pub(crate) async fn workers<S: Store>(State(app): State<AppState<S>>) -> ApiResult<axum::Json<WorkerList>> {
    Ok(axum::Json(WorkerList { workers: app.store.worker_list().await? }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerHello {
    name: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default, deserialize_with = "kyu_core::wire::opt_i64")]
    pid: Option<i64>,
    #[serde(default)]
    queues: Option<Vec<QueueName>>,
    #[serde(default, deserialize_with = "kyu_core::wire::opt_i64")]
    concurrency: Option<i64>,
    #[serde(default)]
    runs: Option<String>,
}

/// `POST /v1/workers`: a worker says who it is and that it is alive (its
/// claims and heartbeats keep it listed too) → 204.
pub(crate) async fn hello<S: Store>(State(app): State<AppState<S>>, Json(w): Json<WorkerHello>) -> ApiResult<StatusCode> {
    for (field, value) in [("host", &w.host), ("runs", &w.runs)] {
        if let Some(v) = value
            && (v.chars().count() > 1000 || v.contains('\0'))
        {
            return Err(ApiError::invalid(field, "at most 1000 characters, without NUL"));
        }
    }
    if w.pid.is_some_and(|p| p < 0) || w.concurrency.is_some_and(|c| c < 0) {
        return Err(ApiError::invalid("pid", "pid and concurrency cannot be negative"));
    }
    let queues = w.queues.unwrap_or_default();
    if queues.len() > 1000 {
        return Err(ApiError::invalid("queues", "at most 1000 queues"));
    }
    let p = WorkerSeenParams { name: w.name, host: w.host, pid: w.pid, queues, concurrency: w.concurrency, runs: w.runs };
    app.store.worker_seen(p).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// HTTP workers are listed by what they do: each claim or heartbeat
/// refreshes their entry, at most every [`Seen::EVERY`] per name.
#[derive(Default)]
pub(crate) struct Seen(Mutex<HashMap<String, Instant>>);

impl Seen {
    const EVERY: Duration = Duration::from_secs(20);

    /// Refreshes `name`'s entry if it is due; never fails the caller.
    pub(crate) async fn touch<S: Store>(&self, store: &S, name: &str, queues: &[QueueName]) {
        {
            let mut seen = self.0.lock().expect("seen");
            let now = Instant::now();
            if seen.get(name).is_some_and(|t| now.duration_since(*t) < Seen::EVERY) {
                return;
            }
            if seen.len() > 10_000 {
                seen.retain(|_, t| now.duration_since(*t) < Seen::EVERY);
            }
            seen.insert(name.to_owned(), now);
        }
        let p = WorkerSeenParams { name: name.to_owned(), queues: queues.to_vec(), ..Default::default() };
        if let Err(e) = store.worker_seen(p).await {
            tracing::debug!(worker = name, error = %e, "could not record the worker");
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsQuery {
    #[serde(default)]
    queue: Option<QueueName>,
    #[serde(default)]
    since: Option<Millis>,
}

#[derive(Serialize)]
pub(crate) struct StatsSeries {
    series: Vec<StatsPoint>,
}

/// `GET /v1/stats?queue=&since=`: throughput and latency per minute (the
/// last hour unless `since` says).
pub(crate) async fn stats<S: Store>(State(app): State<AppState<S>>, Query(q): Query<StatsQuery>) -> ApiResult<axum::Json<StatsSeries>> {
    let since = q.since.unwrap_or(Millis(app.store.clock().now().0 - 3_600_000));
    Ok(axum::Json(StatsSeries { series: app.store.stats(StatsParams { queue: q.queue, since }).await? }))
}

/// Sends committed changes to the live views; nothing when no one watches.
pub(crate) struct Changes(pub broadcast::Sender<Change>);

impl Observer for Changes {
    fn observe(&self, at: Millis, happenings: &[Happening]) {
        if self.0.receiver_count() == 0 {
            return;
        }
        for h in happenings {
            let _ = self.0.send(h.change(at));
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    #[serde(default)]
    queue: Option<QueueName>,
}

/// `GET /v1/events/stream?queue=`: server-sent events, one per state
/// change this server saw (`event: change`). A client too slow to keep up
/// gets `event: lagged` and should reload what it shows.
pub(crate) async fn stream<S: Store>(
    State(app): State<AppState<S>>,
    Query(q): Query<StreamQuery>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let rx = app.changes.subscribe();
    let stop = app.shutdown.clone();
    let stream = futures_util::stream::unfold((rx, stop, q.queue), |(mut rx, stop, queue)| async move {
        loop {
            let got = tokio::select! {
                _ = stop.cancelled() => return None,
                got = rx.recv() => got,
            };
            match got {
                Ok(c) if queue.as_ref().is_none_or(|q| *q == c.queue) => {
                    let data = serde_json::to_string(&c).expect("changes serialise");
                    return Some((Ok(Event::default().event("change").data(data)), (rx, stop, queue)));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let e = Event::default().event("lagged").data(format!("{{\"missed\":{n}}}"));
                    return Some((Ok(e), (rx, stop, queue)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
