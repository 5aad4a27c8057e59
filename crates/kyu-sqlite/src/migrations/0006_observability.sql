-- kyu on SQLite, schema version 6: what the console and /metrics read.

-- Each job's timeline (kyu_core::timeline), appended by the statements
-- that change the job and deleted with it: a JSON array of
-- [at_ms, type, attempt, worker, message]; a plain job's `enqueued` event
-- is its created_at and is not stored.
ALTER TABLE kyu_jobs ADD COLUMN events TEXT NOT NULL DEFAULT '[]';

-- Jobs per queue and state, kept as rows change, so counts and gauges cost
-- O(queues) however much history is retained. The transitions every job
-- takes (insert, queued -> running, running -> completed) are counted by
-- the writer, once per queue and state per transaction
-- (kyu_sqlite::observe::Counted): as per-row triggers they cost two
-- statements per job and transition on the writer's one thread. Triggers
-- count every other change, wherever it is made.
CREATE TABLE kyu_queue_counts (
    queue TEXT    NOT NULL,
    state TEXT    NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;
INSERT INTO kyu_queue_counts (queue, state, n) SELECT queue, state, count(*) FROM kyu_jobs GROUP BY queue, state;

CREATE TRIGGER kyu_jobs_counted_delete AFTER DELETE ON kyu_jobs BEGIN
    UPDATE kyu_queue_counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
END;
CREATE TRIGGER kyu_jobs_counted_update AFTER UPDATE OF state, queue ON kyu_jobs
    WHEN old.queue IS NOT new.queue OR (old.state IS NOT new.state
        AND NOT (old.state = 'queued' AND new.state = 'running')
        AND NOT (old.state = 'running' AND new.state = 'completed')) BEGIN
    UPDATE kyu_queue_counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
    INSERT INTO kyu_queue_counts (queue, state, n) VALUES (new.queue, new.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

-- Per-minute statistics per queue (kyu_core::tally::Minute), written in the
-- transactions that make the changes. Histograms are JSON arrays of counts
-- per bucket of kyu_core::tally::BUCKETS_MS.
CREATE TABLE kyu_stats (
    minute    INTEGER NOT NULL,  -- ms since the epoch, start of the minute
    queue     TEXT    NOT NULL,
    enqueued  INTEGER NOT NULL,
    completed INTEGER NOT NULL,
    failed    INTEGER NOT NULL,
    retried   INTEGER NOT NULL,
    wait_hist TEXT    NOT NULL,
    run_hist  TEXT    NOT NULL,
    PRIMARY KEY (minute, queue)
) WITHOUT ROWID;

-- Workers that said they are alive (their claims and heartbeats say so).
CREATE TABLE kyu_workers (
    name         TEXT PRIMARY KEY,
    host         TEXT,
    pid          INTEGER,
    queues       TEXT NOT NULL,   -- JSON array
    concurrency  INTEGER,
    runs         TEXT,
    started_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL
);
