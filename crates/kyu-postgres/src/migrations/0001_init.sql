-- kyu on PostgreSQL, schema version 1. Documented in docs/schema.md.
-- Plain types so operators can read it with SQL: text states, jsonb
-- payloads, timestamptz times.

CREATE TABLE kyu_jobs (
    seq                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- internal key, enqueue order
    id                  text        NOT NULL UNIQUE,
    queue               text        NOT NULL,
    kind                text        NOT NULL,
    payload             jsonb       NOT NULL,
    checkpoint          jsonb,
    state               text        NOT NULL CHECK (state IN
                          ('scheduled', 'queued', 'waiting', 'running', 'completed', 'failed', 'cancelled')),
    priority            integer     NOT NULL DEFAULT 0,
    run_at              timestamptz NOT NULL,
    attempt             integer     NOT NULL DEFAULT 0,
    max_attempts        integer     NOT NULL,
    backoff             jsonb       NOT NULL,
    timeout_ms          bigint,
    unique_key          text,
    unique_for_ms       bigint,
    unique_until        timestamptz,
    depends_on          jsonb,                    -- array of ids, NULL when none
    pending_deps        integer     NOT NULL DEFAULT 0,
    has_dependents      boolean     NOT NULL DEFAULT false,
    continue_on_failure boolean     NOT NULL DEFAULT false,
    result              jsonb,
    keep_result_ms      bigint,
    errors              jsonb       NOT NULL DEFAULT '[]',
    progress            jsonb,
    tags                jsonb,                    -- array of strings, NULL when none
    group_key           text,
    cancel_requested    boolean     NOT NULL DEFAULT false,
    token               text,
    worker              text,
    created_at          timestamptz NOT NULL,
    started_at          timestamptz,
    finished_at         timestamptz,
    lease_expires_at    timestamptz,
    expires_at          timestamptz              -- terminal jobs: when the pruner deletes it
);

-- Claims read only claimable rows, so millions of retained finished jobs
-- never make a claim slower.
CREATE INDEX kyu_jobs_claim ON kyu_jobs (queue, priority DESC, run_at, seq) WHERE state = 'queued';
CREATE INDEX kyu_jobs_scheduled ON kyu_jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX kyu_jobs_running ON kyu_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX kyu_jobs_expiry ON kyu_jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX kyu_jobs_unique ON kyu_jobs (unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX kyu_jobs_queue_state ON kyu_jobs (queue, state, seq);

CREATE TABLE kyu_job_deps (
    dep_seq bigint NOT NULL,  -- the job waited for
    job_seq bigint NOT NULL,  -- the waiting job
    PRIMARY KEY (dep_seq, job_seq)
);
CREATE INDEX kyu_job_deps_job ON kyu_job_deps (job_seq);

CREATE TABLE kyu_queues (
    name              text PRIMARY KEY,
    paused            boolean NOT NULL DEFAULT false,
    concurrency       integer,
    rate_max          bigint,
    rate_per_ms       bigint,
    group_concurrency integer,
    rate_window_start timestamptz,
    rate_window_count bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL
);
