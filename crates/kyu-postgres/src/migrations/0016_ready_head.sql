-- kyu on PostgreSQL, schema version 16: a claim starts at its queue's head.
--
-- A claim reads kyu_ready in claim order (priority DESC, run_at, seq) and
-- deletes what it takes. While any session holds a snapshot open (a long
-- report, a REPEATABLE READ transaction, a standby with hot_standby_feedback)
-- those deleted rows cannot be pruned, nor their index entries marked dead,
-- so every claim walked all of them from the queue's start: claims slowed
-- with each job done since the snapshot was taken (W6 in docs/benchmarks.md).
--
-- kyu_ready_head keeps, per queue, the key of the queue's first ready row
-- as last seen; a claim's index scan starts there, so it walks only what
-- was claimed since. It is a hint, kept close to the truth:
--
--   * after claims, a store sets it to the queue's head again, at most
--     every 50 ms per queue (kyu_postgres::head);
--   * an insert into kyu_ready whose key comes before it moves it back
--     (kyu_head_back, called by kyu_place and by the enqueue statement for
--     the rows they place), so a higher priority or an earlier run_at is
--     claimed first as before. It never waits: if another transaction holds
--     the row, or the inserting one is not READ COMMITTED (its snapshot may
--     predate the row it would compare with), it leaves the hint as it is;
--   * a row that lands before the hint anyway (those two cases, or an
--     insert racing with a reset) is claimed when a claim cannot fill up
--     from the hint on, or after the next reset: nothing waits longer than
--     that. A queue without a hint is read from its start.

CREATE TABLE kyu_ready_head (
    queue    text        PRIMARY KEY,
    priority integer     NOT NULL,
    run_at   timestamptz NOT NULL,
    seq      bigint      NOT NULL
);
INSERT INTO kyu_ready_head (queue, priority, run_at, seq)
    SELECT DISTINCT ON (queue) queue, priority, run_at, seq FROM kyu_ready ORDER BY queue, priority DESC, run_at, seq;

-- Whether key (p, r, s) comes before key (hp, hr, hs) in claim order
-- (priority DESC, run_at, seq). Inlined where it is used.
CREATE FUNCTION kyu_ahead(p integer, r timestamptz, s bigint, hp integer, hr timestamptz, hs bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p > hp OR (p = hp AND (r, s) < (hr, hs))
$$;

-- Moves queue q's head back to (p, r, s) if that comes before it: see above.
-- Callers check first that it does, so FIFO inserts write nothing.
CREATE FUNCTION kyu_head_back(q text, p integer, r timestamptz, s bigint) RETURNS void LANGUAGE sql AS $$
    UPDATE kyu_ready_head h SET priority = p, run_at = r, seq = s
    WHERE h.queue = (SELECT queue FROM kyu_ready_head WHERE queue = q AND kyu_ahead(p, r, s, priority, run_at, seq)
                     FOR UPDATE SKIP LOCKED)
      AND current_setting('transaction_isolation') = 'read committed'
$$;

CREATE OR REPLACE FUNCTION kyu_place(j kyu_jobs) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CASE j.state
        WHEN 'queued' THEN
            INSERT INTO kyu_ready (seq, queue, priority, run_at, group_key) VALUES (j.seq, j.queue, j.priority, j.run_at, j.group_key);
            PERFORM kyu_head_back(j.queue, j.priority, j.run_at, j.seq) FROM kyu_ready_head h
                WHERE h.queue = j.queue AND kyu_ahead(j.priority, j.run_at, j.seq, h.priority, h.run_at, h.seq);
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
