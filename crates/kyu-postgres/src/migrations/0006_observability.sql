-- kyu on PostgreSQL, schema version 6: what the console and /metrics read.

-- Each job's timeline (kyu_core::timeline), appended by the statements that
-- change the job and deleted with it.
ALTER TABLE kyu_jobs ADD COLUMN events jsonb NOT NULL DEFAULT '[]';

-- Appends an event under kyu_core::timeline::push's rule, in its stored
-- form [at_ms, type, attempt, worker, message] (progress and checkpoint
-- replace one of their type right before them; past 200 events,
-- kyu_core::timeline::MAX_EVENTS, the oldest after the first give way). A
-- null kind appends nothing. SQLite runs the Rust function itself; the
-- conformance suite holds both to the same behaviour. A plain job's
-- enqueue is not stored: readers add it from created_at.
CREATE FUNCTION kyu_event_push(events jsonb, at text, kind text, attempt int, worker text, message text)
RETURNS jsonb LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN kind IS NULL THEN events ELSE (
        SELECT CASE WHEN jsonb_array_length(e) >= 200 THEN e - 1 ELSE e END
            || jsonb_build_array(jsonb_build_array((extract(epoch FROM at::timestamptz) * 1000)::int8, kind, attempt,
                                                   worker, message))
        FROM (SELECT CASE WHEN kind IN ('progress', 'checkpoint') AND events -> -1 ->> 1 = kind
                          THEN events - (-1) ELSE events END AS e) AS c
    ) END
$$;

-- Stores a running job's claim when its run ends other than by completing
-- (kyu_core::timeline::archive_claim_json): until then the claim is the
-- row's started_at, attempt and worker, so claims and completions, every
-- job's hot path, write no timeline bytes. It goes before what the run
-- itself wrote (progress, checkpoint, a cancel request).
CREATE FUNCTION kyu_event_archive(events jsonb, state text, started_at timestamptz, attempt int, worker text)
RETURNS jsonb LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    start_ms int8;
    at int;
    e jsonb;
BEGIN
    IF state IS DISTINCT FROM 'running' OR started_at IS NULL THEN
        RETURN events;
    END IF;
    start_ms := (extract(epoch FROM started_at) * 1000)::int8;
    at := jsonb_array_length(events);
    WHILE at > 0 LOOP
        e := events -> (at - 1);
        EXIT WHEN NOT coalesce(e ->> 1 IN ('progress', 'checkpoint', 'cancel_requested')
                               AND (e -> 2) = to_jsonb(attempt) AND (e ->> 0)::int8 >= start_ms, false);
        at := at - 1;
    END LOOP;
    events := jsonb_insert(events, ARRAY[at::text], jsonb_build_array(start_ms, 'claimed', attempt, worker, NULL::text));
    IF jsonb_array_length(events) > 200 THEN
        events := events - 1;
    END IF;
    RETURN events;
END $$;

-- Jobs per queue and state, O(queues) to read however much history is
-- retained. Statement triggers append each statement's net change to
-- kyu_queue_count_deltas (insert-only: concurrent transactions never wait
-- on each other or deadlock over a counter row); maintenance folds the
-- deltas into kyu_queue_counts, and readers add the two.
CREATE TABLE kyu_queue_counts (
    queue text   NOT NULL,
    state text   NOT NULL,
    n     bigint NOT NULL,
    PRIMARY KEY (queue, state)
);
CREATE TABLE kyu_queue_count_deltas (
    queue text   NOT NULL,
    state text   NOT NULL,
    n     bigint NOT NULL
);
INSERT INTO kyu_queue_counts (queue, state, n) SELECT queue, state, count(*) FROM kyu_jobs GROUP BY queue, state;

CREATE FUNCTION kyu_count_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO kyu_queue_count_deltas (queue, state, n)
            SELECT queue, state, count(*) FROM new_rows GROUP BY queue, state;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO kyu_queue_count_deltas (queue, state, n)
            SELECT queue, state, -count(*) FROM old_rows GROUP BY queue, state;
    ELSE
        INSERT INTO kyu_queue_count_deltas (queue, state, n)
            SELECT queue, state, sum(d) FROM (
                SELECT queue, state, 1 AS d FROM new_rows UNION ALL SELECT queue, state, -1 FROM old_rows) AS c
            GROUP BY queue, state HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER kyu_jobs_counted_insert AFTER INSERT ON kyu_jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION kyu_count_rows();
CREATE TRIGGER kyu_jobs_counted_update AFTER UPDATE ON kyu_jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION kyu_count_rows();
CREATE TRIGGER kyu_jobs_counted_delete AFTER DELETE ON kyu_jobs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION kyu_count_rows();

-- Per-minute statistics per queue (kyu_core::tally::Minute). Each
-- transaction appends its own rows to kyu_stats_deltas (insert-only, as
-- above); maintenance folds them into kyu_stats. Histograms are JSON arrays
-- of counts per bucket of kyu_core::tally::BUCKETS_MS.
CREATE TABLE kyu_stats (
    minute    bigint NOT NULL,  -- ms since the epoch, start of the minute
    queue     text   NOT NULL,
    enqueued  bigint NOT NULL,
    completed bigint NOT NULL,
    failed    bigint NOT NULL,
    retried   bigint NOT NULL,
    wait_hist jsonb  NOT NULL,
    run_hist  jsonb  NOT NULL,
    PRIMARY KEY (minute, queue)
);
CREATE TABLE kyu_stats_deltas (LIKE kyu_stats);

-- Workers that said they are alive (their claims and heartbeats say so).
CREATE TABLE kyu_workers (
    name         text PRIMARY KEY,
    host         text,
    pid          bigint,
    queues       jsonb NOT NULL,
    concurrency  bigint,
    runs         text,
    started_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);
