-- kyu on PostgreSQL, schema version 8: claims and completions count
-- themselves.
--
-- The statement trigger of version 6 captured transition tables (every
-- column of every updated row, payloads and timelines included) for every
-- UPDATE of kyu_jobs, heartbeats too: PostgreSQL allows no column list with
-- transition tables. Now the two transitions on every job's path, queued ->
-- running (the claim) and running -> completed, are counted by the store
-- and appended with the transaction's statistics, once per queue and state;
-- a row trigger, filtered by its WHEN clause before any function runs,
-- counts every other change of state or queue. SQLite's writer splits the
-- work the same way.
DROP TRIGGER kyu_jobs_counted_update ON kyu_jobs;

CREATE FUNCTION kyu_count_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kyu_queue_count_deltas (queue, state, n) VALUES (OLD.queue, OLD.state, -1), (NEW.queue, NEW.state, 1);
    RETURN NULL;
END $$;

CREATE TRIGGER kyu_jobs_counted_change AFTER UPDATE ON kyu_jobs FOR EACH ROW
    WHEN ((OLD.state IS DISTINCT FROM NEW.state OR OLD.queue IS DISTINCT FROM NEW.queue)
          AND NOT (OLD.queue = NEW.queue AND OLD.state = 'queued' AND NEW.state = 'running')
          AND NOT (OLD.queue = NEW.queue AND OLD.state = 'running' AND NEW.state = 'completed'))
    EXECUTE FUNCTION kyu_count_change();
