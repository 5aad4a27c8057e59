-- kyu on PostgreSQL, schema version 4: time limits the store enforces,
-- per-job retention of failed jobs, and a queue-wide default time limit.
-- While running with a time limit: when the store takes the job back
-- ("timeout") even if its worker keeps heartbeating.
ALTER TABLE kyu_jobs ADD COLUMN deadline_at timestamptz;
-- How long a failed or cancelled job is kept; NULL is the store's default.
ALTER TABLE kyu_jobs ADD COLUMN keep_failed_ms bigint;
-- The default per-attempt limit of the queue's jobs (arq's job_timeout).
ALTER TABLE kyu_queues ADD COLUMN timeout_ms bigint;
CREATE INDEX kyu_jobs_deadline ON kyu_jobs (deadline_at) WHERE state = 'running' AND deadline_at IS NOT NULL;
