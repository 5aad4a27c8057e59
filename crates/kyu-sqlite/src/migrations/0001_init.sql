-- kyu on SQLite, schema version 1. Documented in docs/schema.md.
-- Timestamps are RFC 3339 text, UTC, fixed width with milliseconds, so they
-- compare and sort correctly as text. JSON columns hold JSON text.

CREATE TABLE kyu_jobs (
    seq                 INTEGER PRIMARY KEY,  -- internal row key, in enqueue order
    id                  TEXT    NOT NULL UNIQUE,
    queue               TEXT    NOT NULL,
    kind                TEXT    NOT NULL,
    payload             TEXT    NOT NULL,     -- JSON, immutable
    checkpoint          TEXT,                 -- JSON saved by the handler
    state               TEXT    NOT NULL,     -- scheduled|queued|waiting|running|completed|failed|cancelled
    priority            INTEGER NOT NULL DEFAULT 0,
    run_at              TEXT    NOT NULL,
    attempt             INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    backoff             TEXT    NOT NULL,     -- JSON {"kind":...}
    timeout_ms          INTEGER,
    unique_key          TEXT,
    unique_for_ms       INTEGER,
    unique_until        TEXT,                 -- the key stays taken until then (and while not terminal)
    depends_on          TEXT,                 -- JSON array of ids, NULL when none
    pending_deps        INTEGER NOT NULL DEFAULT 0,
    has_dependents      INTEGER NOT NULL DEFAULT 0,  -- some job waits for this one (skip the lookup when not)
    continue_on_failure INTEGER NOT NULL DEFAULT 0,
    result              TEXT,                 -- JSON
    keep_result_ms      INTEGER,
    errors              TEXT    NOT NULL DEFAULT '[]',  -- JSON [{attempt, at, message}]
    progress            TEXT,                 -- JSON
    tags                TEXT,                 -- JSON array, NULL when none
    group_key           TEXT,                 -- the job's `group`
    cancel_requested    INTEGER NOT NULL DEFAULT 0,
    token               TEXT,                 -- current claim's token while running
    worker              TEXT,
    created_at          TEXT    NOT NULL,
    started_at          TEXT,
    finished_at         TEXT,
    lease_expires_at    TEXT,
    expires_at          TEXT                  -- terminal jobs: when the pruner deletes it
);

-- The claim: the head of each queue in priority, run_at, enqueue order.
-- Partial, so retained history never makes a claim slower.
CREATE INDEX kyu_jobs_claim ON kyu_jobs (queue, priority DESC, run_at, seq) WHERE state = 'queued';
-- Promotion of due scheduled jobs, and an idle worker's next wake-up.
CREATE INDEX kyu_jobs_scheduled ON kyu_jobs (run_at) WHERE state = 'scheduled';
-- The lease reaper.
CREATE INDEX kyu_jobs_running ON kyu_jobs (lease_expires_at) WHERE state = 'running';
-- The pruner.
CREATE INDEX kyu_jobs_expiry ON kyu_jobs (expires_at) WHERE expires_at IS NOT NULL;
-- Unique jobs.
CREATE INDEX kyu_jobs_unique ON kyu_jobs (unique_key) WHERE unique_key IS NOT NULL;
-- Listing and counting by queue and state, and per-queue running counts.
CREATE INDEX kyu_jobs_queue_state ON kyu_jobs (queue, state, seq);

-- Who waits for whom: `job_seq` waits until `dep_seq` finishes.
CREATE TABLE kyu_job_deps (
    dep_seq INTEGER NOT NULL,
    job_seq INTEGER NOT NULL,
    PRIMARY KEY (dep_seq, job_seq)
) WITHOUT ROWID;
CREATE INDEX kyu_job_deps_job ON kyu_job_deps (job_seq);

CREATE TABLE kyu_queues (
    name              TEXT PRIMARY KEY,
    paused            INTEGER NOT NULL DEFAULT 0,
    concurrency       INTEGER,
    rate_max          INTEGER,
    rate_per_ms       INTEGER,
    group_concurrency INTEGER,
    rate_window_start TEXT,                 -- fixed-window rate limiter state
    rate_window_count INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL
) WITHOUT ROWID;
