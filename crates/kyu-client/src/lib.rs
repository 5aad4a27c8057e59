//! kyu-client: a [`Store`] that talks to a kyu server over HTTP.
//!
//! The CLI uses it when given `--url`, and a Rust worker can run against a
//! remote server with it unchanged: `Worker::builder(HttpStore::new(url, token)?)`.
//! Claims long-poll on the server (so a worker should poll with interval 0),
//! and lease rescue and pruning are the server's job, so those two calls
//! do nothing here.
#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use kyu_core::{ClaimedJob, Clock, Job, JobId, JobSpec, NewJob, QueueInfo, ValidationError};
use kyu_core::tally::{StatsPoint, WorkerInfo};
use kyu_core::timeline::JobEvent;
use kyu_store::*;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A kyu server as a store.
#[derive(Clone)]
pub struct HttpStore {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    clock: Clock,
    events: broadcast::Sender<StoreEvent>,
    claim_wait_ms: u64,
    /// Never told anything: the server counts what its store does.
    observers: Observers,
}

impl HttpStore {
    /// A store on the server at `url` (`http://127.0.0.1:7700`, or
    /// `https://...`, trusting the system's root certificates), with an
    /// optional bearer token.
    pub fn new(url: &str, token: Option<String>) -> Result<HttpStore, StoreError> {
        HttpStore::with_ca(url, token, None)
    }

    /// [`HttpStore::new`], also trusting the CA certificate(s) in the PEM
    /// file `cacert` (`--cacert`, `KYU_CACERT`), for a server whose
    /// certificate is signed by a private CA.
    pub fn with_ca(url: &str, token: Option<String>, cacert: Option<&std::path::Path>) -> Result<HttpStore, StoreError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(StoreError::Backend(format!("`{url}`: the URL must start with http:// or https://").into()));
        }
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(90)).pool_max_idle_per_host(64);
        if let Some(path) = cacert {
            let pem = std::fs::read(path)
                .map_err(|e| StoreError::Backend(format!("cannot read the CA certificate {}: {e}", path.display()).into()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| StoreError::Backend(format!("{}: not a PEM certificate: {e}", path.display()).into()))?;
            if certs.is_empty() {
                return Err(StoreError::Backend(format!("{}: no certificate in the file", path.display()).into()));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().map_err(|e| StoreError::Backend(Box::new(e)))?;
        let (events, _) = broadcast::channel(1);
        Ok(HttpStore {
            inner: Arc::new(Inner {
                base: url.trim_end_matches('/').to_owned(),
                token,
                http,
                clock: Clock::system(),
                events,
                claim_wait_ms: 2_000,
                observers: Observers::default(),
            }),
        })
    }

    /// Uses `clock` for "now" (tests share the server store's manual clock).
    pub fn with_clock(self, clock: Clock) -> HttpStore {
        let mut inner = self.inner_clone();
        inner.clock = clock;
        HttpStore { inner: Arc::new(inner) }
    }

    fn inner_clone(&self) -> Inner {
        Inner {
            base: self.inner.base.clone(),
            token: self.inner.token.clone(),
            http: self.inner.http.clone(),
            clock: self.inner.clock.clone(),
            events: self.inner.events.clone(),
            claim_wait_ms: self.inner.claim_wait_ms,
            observers: self.inner.observers.clone(),
        }
    }

    /// How long a claim long-polls on the server when nothing is ready
    /// (default 2 s). A worker stopping waits for its claim in flight, so this
    /// also bounds how long an idle worker takes to stop.
    pub fn with_claim_wait(self, wait: Duration) -> HttpStore {
        let mut inner = self.inner_clone();
        inner.claim_wait_ms = wait.as_millis() as u64;
        HttpStore { inner: Arc::new(inner) }
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&Value>) -> Result<T, StoreError> {
        let mut req = self.inner.http.request(method, format!("{}{path}", self.inner.base));
        if let Some(t) = &self.inner.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status == StatusCode::NO_CONTENT {
            return serde_json::from_value(Value::Null).map_err(|e| StoreError::Backend(Box::new(e)));
        }
        let text = resp.text().await.map_err(|e| self.transport(e))?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| StoreError::Backend(format!("unreadable answer: {e}").into()));
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        Err(match status {
            StatusCode::NOT_FOUND => StoreError::NotFound(message.trim_end_matches(" not found").to_owned()),
            StatusCode::CONFLICT => StoreError::Conflict(message),
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::PAYLOAD_TOO_LARGE => {
                let (field, msg) = message.split_once(": ").unwrap_or(("request", message.as_str()));
                StoreError::Invalid(ValidationError::new(field, msg))
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
                StoreError::Unavailable(message.into())
            }
            StatusCode::UNAUTHORIZED => StoreError::Denied {
                code: "unauthorized",
                message: format!(
                    "the server at {} wants a valid token ({message}): set KYU_TOKEN or --auth",
                    self.inner.base
                ),
            },
            StatusCode::FORBIDDEN => StoreError::Denied {
                code: "forbidden",
                message: format!("{message}: use a token whose role may (admin does everything)"),
            },
            _ => StoreError::Backend(format!("{status}: {message}").into()),
        })
    }

    /// A request that never got an answer: the cause spelled out, and what
    /// to check.
    fn transport(&self, e: reqwest::Error) -> StoreError {
        let mut why = String::new();
        let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(c) = cause {
            why = c.to_string();
            cause = c.source();
        }
        let hint = if why.contains("certificate") || why.contains("UnknownIssuer") {
            "; if the server uses a private CA, give it with --cacert or KYU_CACERT"
        } else if e.is_connect() {
            "; is `kyu server` running there?"
        } else {
            ""
        };
        let why = if why.is_empty() { e.to_string() } else { why };
        StoreError::Unavailable(format!("cannot reach the kyu server at {}: {why}{hint}", self.inner.base).into())
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T, StoreError> {
        self.call(Method::POST, path, Some(&body)).await
    }
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A validated job back in the wire form the server validates again.
fn spec_of(job: NewJob) -> Result<JobSpec, StoreError> {
    Ok(JobSpec {
        id: Some(job.id.to_string()),
        queue: Some(job.queue.to_string()),
        kind: job.kind,
        payload: serde_json::from_str(&job.payload).map_err(|e| StoreError::Backend(Box::new(e)))?,
        priority: Some(job.priority),
        run_at: Some(job.run_at.to_rfc3339()),
        delay_ms: None,
        max_attempts: Some(job.max_attempts),
        backoff: Some(job.backoff),
        timeout_ms: job.timeout_ms,
        unique_key: job.unique_key,
        unique_for_ms: job.unique_for_ms,
        depends_on: job.depends_on.into_iter().map(|d| d.to_string()).collect(),
        continue_on_failure: job.continue_on_failure,
        keep_result_ms: job.keep_result_ms,
        keep_failed_ms: job.keep_failed_ms,
        tags: job.tags,
        group: job.group,
    })
}

#[derive(serde::Deserialize)]
struct BatchAnswer {
    jobs: Vec<Inserted>,
}

#[derive(serde::Deserialize)]
struct ReportsAnswer {
    results: Vec<ReportAnswer>,
}

#[derive(serde::Deserialize)]
struct ReportAnswer {
    id: String,
    state: Option<JobState>,
    error: Option<Value>,
}

#[derive(serde::Deserialize)]
struct HeartbeatsAnswer {
    results: Vec<HeartbeatAnswer>,
}

#[derive(serde::Deserialize)]
struct HeartbeatAnswer {
    id: String,
    lease_expires_at: Option<kyu_core::Millis>,
    cancel_requested: Option<bool>,
    error: Option<Value>,
}

/// The error of one slot of a many-in-one answer, as the store would give it.
fn slot_error(e: &Value) -> StoreError {
    let message = e["message"].as_str().unwrap_or("refused").to_owned();
    match e["code"].as_str() {
        Some("not_found") => StoreError::NotFound(message.trim_end_matches(" not found").to_owned()),
        Some("conflict") => StoreError::Conflict(message),
        Some("too_large") => StoreError::Invalid(ValidationError::too_large("result", message)),
        Some("invalid") => {
            let (field, msg) = message.split_once(": ").unwrap_or(("report", message.as_str()));
            StoreError::Invalid(ValidationError::new(field, msg))
        }
        Some("unavailable") => StoreError::Unavailable(message.into()),
        _ => StoreError::Backend(message.into()),
    }
}

#[derive(serde::Deserialize)]
struct Claimed {
    jobs: Vec<ClaimedJob>,
    #[serde(default)]
    next_run_at: Option<kyu_core::Millis>,
    #[serde(default)]
    reports: Vec<ReportAnswer>,
}

#[derive(serde::Deserialize)]
struct Retried {
    retried: u64,
}

/// Reports as `POST /v1/reports` and `POST /v1/claim` take them.
fn report_items(reports: Vec<Report>) -> Vec<Value> {
    reports
        .into_iter()
        .map(|r| match r.outcome {
            Outcome::Complete { result } => json!({"outcome": "complete", "id": r.id, "token": r.token, "result": result}),
            Outcome::Fail { error, failure } => json!({"outcome": "fail", "id": r.id, "token": r.token, "error": error,
                "retry": failure.retry, "retry_in_ms": failure.retry_in_ms}),
            Outcome::Snooze { delay_ms } => json!({"outcome": "snooze", "id": r.id, "token": r.token, "delay_ms": delay_ms}),
        })
        .collect()
}

/// Each report's answer, in order: its new state or why it was refused.
fn report_answers(answers: Vec<ReportAnswer>) -> Vec<Result<JobState, StoreError>> {
    answers
        .into_iter()
        .map(|a| match (a.state, a.error) {
            (Some(state), _) => Ok(state),
            (None, Some(e)) => Err(slot_error(&e)),
            (None, None) => Err(StoreError::Backend(format!("no answer for job `{}`", a.id).into())),
        })
        .collect()
}

impl Store for HttpStore {
    async fn job_insert_many(&self, p: JobInsertManyParams) -> Result<Vec<Inserted>, StoreError> {
        let jobs = p.jobs.into_iter().map(spec_of).collect::<Result<Vec<_>, _>>()?;
        let answer: BatchAnswer = self.post("/v1/jobs/batch", json!({ "jobs": jobs })).await?;
        Ok(answer.jobs)
    }

    async fn job_claim(&self, p: JobClaimParams) -> Result<ClaimResult, StoreError> {
        let body = json!({
            "queues": p.queues, "worker": p.worker, "max": p.max.clamp(1, 1000), "lease_ms": p.lease_ms,
            "wait_ms": self.inner.claim_wait_ms,
        });
        let c: Claimed = self.post("/v1/claim", body).await?;
        Ok(ClaimResult { jobs: c.jobs, next_run_at: c.next_run_at })
    }

    async fn job_report_many(&self, reports: Vec<Report>) -> Result<Vec<Result<JobState, StoreError>>, StoreError> {
        // One request for the whole batch (POST /v1/reports), answered per report.
        let answer: ReportsAnswer = self.post("/v1/reports", json!({ "reports": report_items(reports) })).await?;
        Ok(report_answers(answer.results))
    }

    async fn job_report_and_claim(
        &self,
        reports: Vec<Report>,
        p: JobClaimParams,
    ) -> Result<(Vec<Result<JobState, StoreError>>, ClaimResult), StoreError> {
        if reports.is_empty() {
            return Ok((Vec::new(), self.job_claim(p).await?));
        }
        // One request and one transaction: the reports ride on the claim.
        let body = json!({
            "queues": p.queues, "worker": p.worker, "max": p.max.clamp(1, 1000), "lease_ms": p.lease_ms,
            "wait_ms": self.inner.claim_wait_ms, "reports": report_items(reports),
        });
        let c: Claimed = self.post("/v1/claim", body).await?;
        Ok((report_answers(c.reports), ClaimResult { jobs: c.jobs, next_run_at: c.next_run_at }))
    }

    async fn job_heartbeat_many(&self, p: JobHeartbeatParams) -> Result<Vec<Result<Heartbeat, StoreError>>, StoreError> {
        // One request for all the leases (POST /v1/heartbeats). A transport
        // error fails the whole call as transient, so a network blip never
        // looks like a lost lease to the worker.
        let items: Vec<Value> =
            p.jobs.iter().map(|(id, token)| json!({"id": id, "token": token, "lease_ms": p.lease_ms})).collect();
        let answer: HeartbeatsAnswer = self.post("/v1/heartbeats", json!({ "heartbeats": items })).await?;
        Ok(answer
            .results
            .into_iter()
            .map(|a| match (a.lease_expires_at, a.cancel_requested, a.error) {
                (Some(lease_expires_at), Some(cancel_requested), _) => Ok(Heartbeat { lease_expires_at, cancel_requested }),
                (_, _, Some(e)) => Err(slot_error(&e)),
                _ => Err(StoreError::Backend(format!("no answer for job `{}`", a.id).into())),
            })
            .collect())
    }

    async fn job_add_children(&self, p: JobAddChildrenParams) -> Result<AddedChildren, StoreError> {
        let jobs = p.jobs.into_iter().map(spec_of).collect::<Result<Vec<_>, _>>()?;
        self.post(&format!("/v1/jobs/{}/children", p.id), json!({"token": p.token, "jobs": jobs, "wait": p.wait})).await
    }

    async fn job_save(&self, p: JobSaveParams) -> Result<(), StoreError> {
        if let Some(c) = p.checkpoint {
            let _: Value = self.post(&format!("/v1/jobs/{}/checkpoint", p.id), json!({"token": p.token, "checkpoint": c})).await?;
        }
        if let Some(pr) = p.progress {
            let _: Value = self.post(&format!("/v1/jobs/{}/progress", p.id), json!({"token": p.token, "progress": pr})).await?;
        }
        Ok(())
    }

    async fn job_get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        match self.call(Method::GET, &format!("/v1/jobs/{id}"), None).await {
            Ok(j) => Ok(Some(j)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn job_list(&self, p: JobListParams) -> Result<JobPage, StoreError> {
        let mut q: Vec<String> = Vec::new();
        if let Some(v) = &p.queue {
            q.push(format!("queue={}", enc(v.as_str())));
        }
        if let Some(v) = p.state {
            q.push(format!("state={v}"));
        }
        if let Some(v) = &p.kind {
            q.push(format!("kind={}", enc(v)));
        }
        if let Some(v) = &p.tag {
            q.push(format!("tag={}", enc(v)));
        }
        if let Some(v) = &p.error_contains {
            q.push(format!("error={}", enc(v)));
        }
        if let Some(v) = p.since {
            q.push(format!("since={}", enc(&v.to_rfc3339())));
        }
        if let Some(v) = p.until {
            q.push(format!("until={}", enc(&v.to_rfc3339())));
        }
        if let Some(v) = p.limit {
            q.push(format!("limit={v}"));
        }
        if let Some(v) = &p.cursor {
            q.push(format!("cursor={}", enc(v)));
        }
        self.call(Method::GET, &format!("/v1/jobs?{}", q.join("&")), None).await
    }

    async fn job_cancel(&self, id: &JobId) -> Result<Job, StoreError> {
        self.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await
    }

    async fn job_retry(&self, p: JobRetryParams) -> Result<Job, StoreError> {
        self.post(&format!("/v1/jobs/{}/retry", p.id), json!({"dependents": p.dependents})).await
    }

    async fn job_log_append(&self, p: JobLogAppendParams) -> Result<(), StoreError> {
        if p.lines.is_empty() {
            return Ok(());
        }
        let _: Value = self.post(&format!("/v1/jobs/{}/log", p.id), json!({"token": p.token, "lines": p.lines})).await?;
        Ok(())
    }

    async fn job_log(&self, p: JobLogParams) -> Result<Vec<LogLine>, StoreError> {
        let q = p.attempt.map(|a| format!("?attempt={a}")).unwrap_or_default();
        let l: LogLines = self.call(Method::GET, &format!("/v1/jobs/{}/log{q}", p.id), None).await?;
        Ok(l.lines)
    }

    async fn job_retry_many(&self, p: JobRetryManyParams) -> Result<u64, StoreError> {
        let body = json!({
            "queue": p.queue, "kind": p.kind, "state": p.state, "since": p.since, "until": p.until, "error": p.error_contains,
        });
        let body = Value::Object(body.as_object().expect("object").iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect());
        let r: Retried = self.post("/v1/jobs/retry", body).await?;
        Ok(r.retried)
    }

    async fn job_delete_many(&self, p: JobRetryManyParams) -> Result<u64, StoreError> {
        let body = json!({
            "queue": p.queue, "kind": p.kind, "state": p.state, "since": p.since, "until": p.until, "error": p.error_contains,
        });
        let body = Value::Object(body.as_object().expect("object").iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect());
        let r: Deleted = self.post("/v1/jobs/delete", body).await?;
        Ok(r.deleted)
    }

    async fn job_delete(&self, id: &JobId) -> Result<(), StoreError> {
        let _: Value = self.call(Method::DELETE, &format!("/v1/jobs/{id}"), None).await?;
        Ok(())
    }

    async fn job_rescue(&self) -> Result<RescueCounts, StoreError> {
        Ok(RescueCounts::default()) // the server does this
    }

    async fn job_prune(&self, _p: JobPruneParams) -> Result<u64, StoreError> {
        Ok(0) // the server does this
    }

    async fn queue_list(&self) -> Result<Vec<QueueInfo>, StoreError> {
        let l: QueueListAnswer = self.call(Method::GET, "/v1/queues", None).await?;
        Ok(l.queues)
    }

    async fn queue_update(&self, p: QueueUpdateParams) -> Result<QueueInfo, StoreError> {
        let mut body = serde_json::Map::new();
        if let Some(v) = p.paused {
            body.insert("paused".into(), json!(v));
        }
        if let Some(v) = p.concurrency {
            body.insert("concurrency".into(), json!(v));
        }
        if let Some(v) = p.rate_limit {
            body.insert("rate_limit".into(), json!(v));
        }
        if let Some(v) = p.group_concurrency {
            body.insert("group_concurrency".into(), json!(v));
        }
        if let Some(v) = p.timeout_ms {
            body.insert("timeout_ms".into(), json!(v));
        }
        self.call(Method::PATCH, &format!("/v1/queues/{}", p.name), Some(&Value::Object(body))).await
    }

    async fn schedule_put(&self, p: SchedulePutParams) -> Result<kyu_core::Schedule, StoreError> {
        // The server checks the spec and computes next_run_at itself.
        let body = serde_json::to_value(&p.spec).map_err(|e| StoreError::Backend(e.into()))?;
        self.call(Method::PUT, &format!("/v1/schedules/{}", p.name), Some(&body)).await
    }

    async fn schedule_get(&self, name: &str) -> Result<Option<kyu_core::Schedule>, StoreError> {
        match self.call(Method::GET, &format!("/v1/schedules/{name}"), None).await {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn schedule_list(&self) -> Result<Vec<kyu_core::Schedule>, StoreError> {
        let l: ScheduleList = self.call(Method::GET, "/v1/schedules", None).await?;
        Ok(l.schedules)
    }

    async fn schedule_delete(&self, name: &str) -> Result<(), StoreError> {
        let _: Value = self.call(Method::DELETE, &format!("/v1/schedules/{name}"), None).await?;
        Ok(())
    }

    async fn schedule_advance(&self, _p: ScheduleAdvanceParams) -> Result<bool, StoreError> {
        Ok(false) // the server's scheduler does this
    }

    async fn job_events(&self, id: &JobId) -> Result<Vec<JobEvent>, StoreError> {
        let e: EventList = self.call(Method::GET, &format!("/v1/jobs/{id}/events"), None).await?;
        Ok(e.events)
    }

    async fn worker_seen(&self, p: WorkerSeenParams) -> Result<(), StoreError> {
        let body = json!({
            "name": p.name, "host": p.host, "pid": p.pid, "queues": p.queues, "concurrency": p.concurrency, "runs": p.runs,
        });
        let _: Value = self.post("/v1/workers", body).await?;
        Ok(())
    }

    async fn worker_list(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        let w: WorkerList = self.call(Method::GET, "/v1/workers", None).await?;
        Ok(w.workers)
    }

    async fn stats(&self, p: StatsParams) -> Result<Vec<StatsPoint>, StoreError> {
        let mut path = format!("/v1/stats?since={}", enc(&p.since.to_rfc3339()));
        if let Some(q) = &p.queue {
            path.push_str(&format!("&queue={q}"));
        }
        let s: StatsSeries = self.call(Method::GET, &path, None).await?;
        Ok(s.series)
    }

    fn observers(&self) -> &Observers {
        &self.inner.observers
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
    }

    fn supports_listen_notify(&self) -> bool {
        false
    }

    fn clock(&self) -> &Clock {
        &self.inner.clock
    }
}

#[derive(serde::Deserialize)]
struct QueueListAnswer {
    queues: Vec<QueueInfo>,
}

#[derive(serde::Deserialize)]
struct EventList {
    events: Vec<JobEvent>,
}

#[derive(serde::Deserialize)]
struct WorkerList {
    workers: Vec<WorkerInfo>,
}

#[derive(serde::Deserialize)]
struct StatsSeries {
    series: Vec<StatsPoint>,
}


#[derive(serde::Deserialize)]
struct Deleted {
    deleted: u64,
}
