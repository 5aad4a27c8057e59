-- kyu on PostgreSQL, schema version 14: a job's row is indexed only on what
-- never changes, and narrow tables beside it say where it stands.
--
-- Every index of kyu_jobs but the keys named a state in its predicate, so
-- no change of state could be a HOT update: the claim and the completion
-- each wrote a new entry in every index, keys included (W1: 287 WAL bytes
-- per job in the id index alone, three entries). Now kyu_jobs keeps its
-- primary key (seq), id and unique_key, none of which a transition sets,
-- and the claim and the completion update the row in place. What the
-- partial indexes found is kept in narrow rows instead, one per job in the
-- state that needs finding:
--
--   kyu_ready    queued jobs, in claim order per queue (and per group);
--   kyu_running  running jobs: the reaper, concurrency limits, workers;
--   kyu_parked   scheduled, waiting, failed and cancelled jobs, for their
--                lists and for promotion of scheduled jobs that are due;
--   kyu_expiry   finished jobs' expiry times, for the pruner.
--
-- Completed jobs have no narrow row: history costs claims nothing.
--
-- Who writes them: the enqueue statement places the jobs it inserts, the
-- claim moves its jobs from kyu_ready to kyu_running and the completion
-- takes them off kyu_running (and into kyu_expiry), in the same statements
-- that change the rows; every other change of state (rarer: retries,
-- failures, cancels, releases, promotions) is placed by the row trigger
-- that already counted it, and deletions by the statement trigger that
-- counts them. Everyone locks a job's row before its narrow rows, except
-- the claim, which takes both with SKIP LOCKED and so never waits.

CREATE TABLE kyu_ready (
    seq       bigint      NOT NULL,
    queue     text        NOT NULL,
    priority  integer     NOT NULL,
    run_at    timestamptz NOT NULL,
    group_key text
);
CREATE INDEX kyu_ready_claim ON kyu_ready (queue, priority DESC, run_at, seq);
CREATE INDEX kyu_ready_list ON kyu_ready (queue, seq);
CREATE INDEX kyu_ready_groups ON kyu_ready (queue, group_key, priority DESC, run_at, seq) WHERE group_key IS NOT NULL;

CREATE TABLE kyu_running (
    seq       bigint PRIMARY KEY,
    queue     text NOT NULL,
    group_key text
);

CREATE TABLE kyu_parked (
    seq    bigint      PRIMARY KEY,
    queue  text        NOT NULL,
    state  text        NOT NULL CHECK (state IN ('scheduled', 'waiting', 'failed', 'cancelled')),
    run_at timestamptz NOT NULL
);
CREATE INDEX kyu_parked_list ON kyu_parked (queue, state, seq);
CREATE INDEX kyu_parked_due ON kyu_parked (run_at) WHERE state = 'scheduled';

CREATE TABLE kyu_expiry (
    seq        bigint      NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX kyu_expiry_at ON kyu_expiry (expires_at, seq);

INSERT INTO kyu_ready (seq, queue, priority, run_at, group_key)
    SELECT seq, queue, priority, run_at, group_key FROM kyu_jobs WHERE state = 'queued';
INSERT INTO kyu_running (seq, queue, group_key) SELECT seq, queue, group_key FROM kyu_jobs WHERE state = 'running';
INSERT INTO kyu_parked (seq, queue, state, run_at)
    SELECT seq, queue, state, run_at FROM kyu_jobs WHERE state IN ('scheduled', 'waiting', 'failed', 'cancelled');
INSERT INTO kyu_expiry (seq, expires_at) SELECT seq, expires_at FROM kyu_jobs WHERE expires_at IS NOT NULL;

DROP INDEX kyu_jobs_claim, kyu_jobs_group_heads, kyu_jobs_running, kyu_jobs_deadline, kyu_jobs_scheduled,
    kyu_jobs_waiting_list, kyu_jobs_dead_list, kyu_jobs_expiry;

-- A job's place, from its row: the one rule the statements above follow.
CREATE FUNCTION kyu_place(j kyu_jobs) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CASE j.state
        WHEN 'queued' THEN
            INSERT INTO kyu_ready (seq, queue, priority, run_at, group_key) VALUES (j.seq, j.queue, j.priority, j.run_at, j.group_key);
        WHEN 'running' THEN
            INSERT INTO kyu_running (seq, queue, group_key) VALUES (j.seq, j.queue, j.group_key);
        WHEN 'completed' THEN
            NULL;
        ELSE
            INSERT INTO kyu_parked (seq, queue, state, run_at) VALUES (j.seq, j.queue, j.state, j.run_at);
    END CASE;
    IF j.expires_at IS NOT NULL THEN
        INSERT INTO kyu_expiry (seq, expires_at) VALUES (j.seq, j.expires_at);
    END IF;
END $$;

CREATE FUNCTION kyu_unplace(j kyu_jobs) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CASE j.state
        WHEN 'queued' THEN DELETE FROM kyu_ready WHERE queue = j.queue AND seq = j.seq;
        WHEN 'running' THEN DELETE FROM kyu_running WHERE seq = j.seq;
        WHEN 'completed' THEN NULL;
        ELSE DELETE FROM kyu_parked WHERE seq = j.seq;
    END CASE;
    IF j.expires_at IS NOT NULL THEN
        DELETE FROM kyu_expiry WHERE expires_at = j.expires_at AND seq = j.seq;
    END IF;
END $$;

-- The row trigger of version 8, which counts every change of state but the
-- claim and the completion, now also moves the job's narrow rows.
CREATE OR REPLACE FUNCTION kyu_count_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kyu_queue_count_deltas (queue, state, n) VALUES (OLD.queue, OLD.state, -1), (NEW.queue, NEW.state, 1);
    PERFORM kyu_unplace(OLD);
    PERFORM kyu_place(NEW);
    RETURN NULL;
END $$;

-- Deleted jobs (pruned, deleted by an operator) leave their narrow rows.
CREATE OR REPLACE FUNCTION kyu_count_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO kyu_queue_count_deltas (queue, state, n)
            SELECT queue, state, count(*) FROM new_rows GROUP BY queue, state;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO kyu_queue_count_deltas (queue, state, n)
            SELECT queue, state, -count(*) FROM old_rows GROUP BY queue, state;
        DELETE FROM kyu_ready r USING old_rows o WHERE o.state = 'queued' AND r.queue = o.queue AND r.seq = o.seq;
        DELETE FROM kyu_running r USING old_rows o WHERE o.state = 'running' AND r.seq = o.seq;
        DELETE FROM kyu_parked p USING old_rows o WHERE p.seq = o.seq;
        DELETE FROM kyu_expiry e USING old_rows o WHERE e.expires_at = o.expires_at AND e.seq = o.seq;
    END IF;
    RETURN NULL;
END $$;

-- Rows whose narrow rows disagree with them (none, unless something wrote
-- kyu_jobs by hand): the tests check it after every run.
CREATE FUNCTION kyu_misplaced() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM (
        SELECT seq, queue, priority, run_at, group_key FROM kyu_jobs WHERE state = 'queued'
        EXCEPT ALL SELECT seq, queue, priority, run_at, group_key FROM kyu_ready) AS a)
    + (SELECT count(*) FROM (
        SELECT seq, queue, priority, run_at, group_key FROM kyu_ready
        EXCEPT ALL SELECT seq, queue, priority, run_at, group_key FROM kyu_jobs WHERE state = 'queued') AS b)
    + (SELECT count(*) FROM (
        (SELECT seq, queue, group_key FROM kyu_jobs WHERE state = 'running' EXCEPT ALL SELECT seq, queue, group_key FROM kyu_running)
        UNION ALL
        (SELECT seq, queue, group_key FROM kyu_running EXCEPT ALL SELECT seq, queue, group_key FROM kyu_jobs WHERE state = 'running')) AS c)
    + (SELECT count(*) FROM (
        (SELECT seq, queue, state, run_at FROM kyu_jobs WHERE state IN ('scheduled', 'waiting', 'failed', 'cancelled')
         EXCEPT ALL SELECT seq, queue, state, run_at FROM kyu_parked)
        UNION ALL
        (SELECT seq, queue, state, run_at FROM kyu_parked
         EXCEPT ALL SELECT seq, queue, state, run_at FROM kyu_jobs WHERE state IN ('scheduled', 'waiting', 'failed', 'cancelled'))) AS d)
    + (SELECT count(*) FROM (
        (SELECT seq, expires_at FROM kyu_jobs WHERE expires_at IS NOT NULL EXCEPT ALL SELECT seq, expires_at FROM kyu_expiry)
        UNION ALL
        (SELECT seq, expires_at FROM kyu_expiry EXCEPT ALL SELECT seq, expires_at FROM kyu_jobs WHERE expires_at IS NOT NULL)) AS e)
$$;

-- Claims and completions are HOT updates when the page has room for the
-- new version, and HOT pruning gives the room back once the old versions
-- are dead: at fillfactor 50, 80 % of W1's updates were HOT; at 30, 99.6 %,
-- with about as many pages after the run (1,444 against 1,344).
ALTER TABLE kyu_jobs SET (fillfactor = 30);
