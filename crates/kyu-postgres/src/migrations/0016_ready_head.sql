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
--   * an insert into kyu_ready whose first key comes before it moves it
--     back (the trigger below), so a higher priority or an earlier run_at
--     is claimed first as before. The trigger never waits: if another
--     transaction holds the row, or the inserting one is not READ COMMITTED
--     (its snapshot may predate the row it would compare with), it leaves
--     the hint as it is;
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

CREATE FUNCTION kyu_ready_ahead() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE kyu_ready_head h SET priority = a.priority, run_at = a.run_at, seq = a.seq
    FROM (
        SELECT h.queue, k.priority, k.run_at, k.seq
        FROM kyu_ready_head h
        JOIN (SELECT DISTINCT ON (queue) queue, priority, run_at, seq FROM added ORDER BY queue, priority DESC, run_at, seq) k
          ON h.queue = k.queue
        WHERE (k.priority > h.priority OR (k.priority = h.priority AND (k.run_at, k.seq) < (h.run_at, h.seq)))
          AND current_setting('transaction_isolation') = 'read committed'
        FOR UPDATE OF h SKIP LOCKED) a
    WHERE h.queue = a.queue;
    RETURN NULL;
END $$;

CREATE TRIGGER kyu_ready_ahead AFTER INSERT ON kyu_ready
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION kyu_ready_ahead();
