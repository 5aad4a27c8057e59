-- kyu on PostgreSQL, schema version 15: running jobs and expiry times are
-- kept one row per batch, not one per job.
--
-- In version 14 every job inserted and deleted a kyu_running row (184 WAL
-- bytes per job with its key) and inserted a kyu_expiry row (142), a fifth
-- of W1's WAL. But a claim hands out its jobs under one token, and a batch
-- of completions gives most of its jobs one expiry time, so:
--
--   kyu_claims  one row per claim and queue: the token and the jobs' seqs.
--               A job listed there is running if its row still holds that
--               token; the completion writes nothing here, and maintenance
--               deletes rows none of whose jobs hold their token any more.
--   kyu_expiry  one row per expiry time and batch: the time and the seqs.
--               The pruner deletes a listed job only if its own expires_at
--               is still due (a retried job has moved on), then the row.
--
-- Rows that no longer describe any job are harmless and dropped by those
-- two sweeps, so a job leaving the running state, or a finished state,
-- touches neither table.

CREATE TABLE kyu_claims (
    token text     NOT NULL,
    queue text     NOT NULL,
    seqs  bigint[] NOT NULL
);
INSERT INTO kyu_claims (token, queue, seqs)
    SELECT token, queue, array_agg(seq ORDER BY seq) FROM kyu_jobs WHERE state = 'running' GROUP BY token, queue;
DROP TABLE kyu_running;

DROP TABLE kyu_expiry;
CREATE TABLE kyu_expiry (
    expires_at timestamptz NOT NULL,
    seqs       bigint[]    NOT NULL
);
CREATE INDEX kyu_expiry_at ON kyu_expiry (expires_at);
INSERT INTO kyu_expiry (expires_at, seqs)
    SELECT expires_at, array_agg(seq ORDER BY seq) FROM kyu_jobs WHERE expires_at IS NOT NULL GROUP BY expires_at;

CREATE OR REPLACE FUNCTION kyu_place(j kyu_jobs) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CASE j.state
        WHEN 'queued' THEN
            INSERT INTO kyu_ready (seq, queue, priority, run_at, group_key) VALUES (j.seq, j.queue, j.priority, j.run_at, j.group_key);
        WHEN 'running' THEN
            INSERT INTO kyu_claims (token, queue, seqs) VALUES (j.token, j.queue, ARRAY[j.seq]);
        WHEN 'completed' THEN
            NULL;
        ELSE
            INSERT INTO kyu_parked (seq, queue, state, run_at) VALUES (j.seq, j.queue, j.state, j.run_at);
    END CASE;
    IF j.expires_at IS NOT NULL THEN
        INSERT INTO kyu_expiry (expires_at, seqs) VALUES (j.expires_at, ARRAY[j.seq]);
    END IF;
END $$;

-- Leaving running or a finished state leaves kyu_claims and kyu_expiry
-- as they are (see above).
CREATE OR REPLACE FUNCTION kyu_unplace(j kyu_jobs) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CASE j.state
        WHEN 'queued' THEN DELETE FROM kyu_ready WHERE queue = j.queue AND seq = j.seq;
        WHEN 'running' THEN NULL;
        WHEN 'completed' THEN NULL;
        ELSE DELETE FROM kyu_parked WHERE seq = j.seq;
    END CASE;
END $$;

CREATE OR REPLACE FUNCTION kyu_count_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO kyu_queue_count_deltas (queue, state, n)
            SELECT queue, state, count(*) FROM new_rows GROUP BY queue, state;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO kyu_queue_count_deltas (queue, state, n)
            SELECT queue, state, -count(*) FROM old_rows GROUP BY queue, state;
        DELETE FROM kyu_ready r USING old_rows o WHERE o.state = 'queued' AND r.queue = o.queue AND r.seq = o.seq;
        DELETE FROM kyu_parked p USING old_rows o WHERE p.seq = o.seq;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION kyu_misplaced() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM (
        SELECT seq, queue, priority, run_at, group_key FROM kyu_jobs WHERE state = 'queued'
        EXCEPT ALL SELECT seq, queue, priority, run_at, group_key FROM kyu_ready) AS a)
    + (SELECT count(*) FROM (
        SELECT seq, queue, priority, run_at, group_key FROM kyu_ready
        EXCEPT ALL SELECT seq, queue, priority, run_at, group_key FROM kyu_jobs WHERE state = 'queued') AS b)
    + (SELECT count(*) FROM kyu_jobs j WHERE j.state = 'running' AND NOT EXISTS (
        SELECT 1 FROM kyu_claims c WHERE c.token = j.token AND c.queue = j.queue AND j.seq = ANY(c.seqs)))
    + (SELECT count(*) FROM (
        (SELECT seq, queue, state, run_at FROM kyu_jobs WHERE state IN ('scheduled', 'waiting', 'failed', 'cancelled')
         EXCEPT ALL SELECT seq, queue, state, run_at FROM kyu_parked)
        UNION ALL
        (SELECT seq, queue, state, run_at FROM kyu_parked
         EXCEPT ALL SELECT seq, queue, state, run_at FROM kyu_jobs WHERE state IN ('scheduled', 'waiting', 'failed', 'cancelled'))) AS d)
    + (SELECT count(*) FROM kyu_jobs j WHERE j.expires_at IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM kyu_expiry e WHERE e.expires_at = j.expires_at AND j.seq = ANY(e.seqs)))
$$;
