-- kyu on SQLite, schema version 8: heartbeats write no index.
--
-- kyu_jobs_running was keyed by lease_expires_at, the one column a heartbeat
-- sets, so every heartbeat deleted and inserted an index entry on the
-- writer's thread. Keyed by seq, it changes only when a job starts or stops
-- running. The reaper reads the running rows (as many as workers run at
-- once) and sorts them by lease; running jobs are listed in seq order
-- straight from this index.
DROP INDEX kyu_jobs_running;
CREATE INDEX kyu_jobs_running ON kyu_jobs (seq) WHERE state = 'running';
