//! The conformance suite over HTTP: each case runs against an in-process
//! `kyu server` on SQLite and on PostgreSQL, through [`HttpStore`], so the
//! worker protocol is held to the same rules as the stores themselves.
//!
//! Lease rescue, pruning and the scheduler are the server's own background
//! work, not part of the API, so those three calls (and the store's events,
//! which HTTP clients get from the event stream, and asking to hear of a
//! job's end) go to the server's store directly; everything else crosses
//! the wire.

use std::time::Duration;

use kyu_client::HttpStore;
use kyu_core::{Clock, Job, JobId, QueueInfo};
use kyu_server::ServerConfig;
use kyu_store::*;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A server's store seen through HTTP.
#[derive(Clone)]
struct Remote<S: Store> {
    http: HttpStore,
    local: S,
}

/// Stops the server when the case ends, and keeps its database alive.
struct Guard<G> {
    stop: CancellationToken,
    _db: G,
}

impl<G> Drop for Guard<G> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve<S: Store, G>(local: S, db: G) -> (Remote<S>, Guard<G>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let config = ServerConfig { maintenance: None, max_batch: 100_000, ..ServerConfig::default() };
    tokio::spawn(kyu_server::serve_on(listener, local.clone(), config, stop.clone()));
    let http = HttpStore::new(&format!("http://{addr}"), None)
        .expect("client")
        .with_clock(local.clock().clone())
        .with_claim_wait(Duration::ZERO);
    (Remote { http, local }, Guard { stop, _db: db })
}

async fn over_sqlite() -> (Remote<kyu_sqlite::SqliteStore>, Guard<kyu_sqlite::testing::Fresh>) {
    let (store, dir) = kyu_sqlite::testing::fresh_store();
    serve(store, dir).await
}

async fn over_postgres() -> (Remote<kyu_postgres::PgStore>, Guard<kyu_postgres::testing::Fresh>) {
    let (store, schema) = kyu_postgres::testing::fresh_store().await;
    serve(store, schema).await
}

mod sqlite {
    use super::over_sqlite;
    kyu_storetest::conformance!(over_sqlite);
}

mod postgres {
    use super::over_postgres;
    kyu_storetest::conformance!(over_postgres);
}

impl<S: Store> Store for Remote<S> {
    async fn job_insert_many(&self, p: JobInsertManyParams) -> Result<Vec<Inserted>, StoreError> {
        self.http.job_insert_many(p).await
    }
    async fn job_claim(&self, p: JobClaimParams) -> Result<ClaimResult, StoreError> {
        self.http.job_claim(p).await
    }
    async fn job_report_many(&self, r: Vec<Report>) -> Result<Vec<Result<JobState, StoreError>>, StoreError> {
        self.http.job_report_many(r).await
    }
    async fn job_heartbeat_many(&self, p: JobHeartbeatParams) -> Result<Vec<Result<Heartbeat, StoreError>>, StoreError> {
        self.http.job_heartbeat_many(p).await
    }
    async fn job_add_children(&self, p: JobAddChildrenParams) -> Result<AddedChildren, StoreError> {
        self.http.job_add_children(p).await
    }
    async fn job_save(&self, p: JobSaveParams) -> Result<(), StoreError> {
        self.http.job_save(p).await
    }
    async fn job_get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.http.job_get(id).await
    }
    async fn job_list(&self, p: JobListParams) -> Result<JobPage, StoreError> {
        self.http.job_list(p).await
    }
    async fn job_cancel(&self, id: &JobId) -> Result<Job, StoreError> {
        self.http.job_cancel(id).await
    }
    async fn job_retry(&self, p: JobRetryParams) -> Result<Job, StoreError> {
        self.http.job_retry(p).await
    }
    async fn job_log_append(&self, p: JobLogAppendParams) -> Result<(), StoreError> {
        self.http.job_log_append(p).await
    }
    async fn job_log(&self, p: JobLogParams) -> Result<Vec<LogLine>, StoreError> {
        self.http.job_log(p).await
    }
    async fn job_retry_many(&self, p: JobRetryManyParams) -> Result<u64, StoreError> {
        self.http.job_retry_many(p).await
    }
    async fn job_delete_many(&self, p: JobRetryManyParams) -> Result<u64, StoreError> {
        self.http.job_delete_many(p).await
    }
    async fn job_delete(&self, id: &JobId) -> Result<(), StoreError> {
        self.http.job_delete(id).await
    }
    async fn job_rescue(&self) -> Result<RescueCounts, StoreError> {
        self.local.job_rescue().await
    }
    async fn job_prune(&self, p: JobPruneParams) -> Result<u64, StoreError> {
        self.local.job_prune(p).await
    }
    async fn queue_list(&self) -> Result<Vec<QueueInfo>, StoreError> {
        self.http.queue_list().await
    }
    async fn queue_update(&self, p: QueueUpdateParams) -> Result<QueueInfo, StoreError> {
        self.http.queue_update(p).await
    }
    async fn schedule_put(&self, p: SchedulePutParams) -> Result<kyu_core::Schedule, StoreError> {
        self.http.schedule_put(p).await
    }
    async fn schedule_get(&self, name: &str) -> Result<Option<kyu_core::Schedule>, StoreError> {
        self.http.schedule_get(name).await
    }
    async fn schedule_list(&self) -> Result<Vec<kyu_core::Schedule>, StoreError> {
        self.http.schedule_list().await
    }
    async fn schedule_delete(&self, name: &str) -> Result<(), StoreError> {
        self.http.schedule_delete(name).await
    }
    async fn schedule_advance(&self, p: ScheduleAdvanceParams) -> Result<bool, StoreError> {
        self.local.schedule_advance(p).await
    }
    async fn job_events(&self, id: &JobId) -> Result<Vec<kyu_core::timeline::JobEvent>, StoreError> {
        self.http.job_events(id).await
    }
    async fn worker_seen(&self, p: WorkerSeenParams) -> Result<(), StoreError> {
        self.http.worker_seen(p).await
    }
    async fn worker_list(&self) -> Result<Vec<kyu_core::tally::WorkerInfo>, StoreError> {
        self.http.worker_list().await
    }
    async fn stats(&self, p: StatsParams) -> Result<Vec<kyu_core::tally::StatsPoint>, StoreError> {
        self.http.stats(p).await
    }
    fn observers(&self) -> &Observers {
        self.local.observers()
    }
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.local.subscribe()
    }
    async fn job_watch(&self, id: &JobId) -> Result<(), StoreError> {
        self.local.job_watch(id).await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        self.local.flush().await
    }
    fn supports_listen_notify(&self) -> bool {
        self.local.supports_listen_notify()
    }
    fn clock(&self) -> &Clock {
        self.http.clock()
    }
}
