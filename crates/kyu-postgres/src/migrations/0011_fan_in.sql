-- kyu on PostgreSQL, schema version 11: finished dependencies are counted
-- without locking the job that waits for them.
--
-- A waiting job's pending_deps was decremented by every transaction that
-- finished one of its dependencies, under a row lock held to commit, so
-- completions of a parent's children took turns (W5: a fan-in of 10,000
-- spent most of its extra time waiting on that lock). Now such a
-- transaction appends a row here (the job, how many of its dependencies it
-- satisfied) while holding only a KEY SHARE lock on the waiting job, which
-- other appenders share; what is pending is pending_deps minus the sum of
-- the job's rows. Whoever changes the waiting job's state (releases it,
-- fails it, revives it) locks it FOR UPDATE, which waits for the appenders
-- in flight, so it always counts every appended row. A transaction that
-- sees the count still above zero checks again after it commits, since
-- appenders in flight together may have finished the job's last ones;
-- maintenance folds the rows into pending_deps and clears those of jobs no
-- longer waiting.
CREATE TABLE kyu_dep_done (
    job_seq bigint  NOT NULL,  -- the waiting job
    n       integer NOT NULL   -- dependencies satisfied
);
CREATE INDEX kyu_dep_done_job ON kyu_dep_done (job_seq);

-- A job holds a claim token only while it runs: every transition out of
-- running clears it. As a rule of the table, the token alone fences reports
-- and heartbeats, so their statements find jobs by id and need no
-- `state = 'running'` test, which let the planner scan the running jobs'
-- partial index instead, dead entries and all (W5: 6,970 entries read to
-- complete 16 jobs, 3 ms).
UPDATE kyu_jobs SET token = NULL WHERE token IS NOT NULL AND state <> 'running';
ALTER TABLE kyu_jobs ADD CONSTRAINT kyu_jobs_token_only_running CHECK (token IS NULL OR state = 'running');
