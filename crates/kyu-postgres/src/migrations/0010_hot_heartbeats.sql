-- kyu on PostgreSQL, schema version 10: heartbeats update rows in place.
--
-- kyu_jobs_running was keyed by lease_expires_at, the one column a heartbeat
-- sets, so every heartbeat was a non-HOT update: a new entry in every index
-- of kyu_jobs and a dead one for vacuum. Keyed by seq, a heartbeat (and a
-- checkpoint or progress save) changes no indexed column, and with room left
-- on the page (fillfactor 90, for pages filled from now on) it is a HOT
-- update. The reaper reads the running rows (as many as workers run at
-- once) and sorts them by lease; running jobs are listed in seq order
-- straight from this index.
DROP INDEX kyu_jobs_running;
CREATE INDEX kyu_jobs_running ON kyu_jobs (seq) WHERE state = 'running';
ALTER TABLE kyu_jobs SET (fillfactor = 90);
