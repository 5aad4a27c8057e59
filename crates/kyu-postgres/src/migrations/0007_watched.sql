-- kyu on PostgreSQL, schema version 7: a job's end is announced (NOTIFY
-- 'f:ID') only when someone waits for it. Every notification costs each
-- listening connection in the database a transaction to read it, and every
-- notifying commit takes PostgreSQL's global notify lock; completions that
-- nobody waits for (nearly all) now notify nothing. Waiters set the flag
-- before they read the job's state (Store::job_watch).
ALTER TABLE kyu_jobs ADD COLUMN finish_watched boolean NOT NULL DEFAULT false;
