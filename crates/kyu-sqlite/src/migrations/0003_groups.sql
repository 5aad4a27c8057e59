-- kyu on SQLite, schema version 3: fair claims across groups.
-- The head of each group's queued jobs, for queues with group_concurrency.
CREATE INDEX kyu_jobs_group_heads ON kyu_jobs (queue, group_key, priority DESC, run_at, seq)
    WHERE state = 'queued' AND group_key IS NOT NULL;
-- The last group a claim served; the next claim starts after it (round-robin).
ALTER TABLE kyu_queues ADD COLUMN group_cursor TEXT;
