-- kyu on PostgreSQL, schema version 12: a job with the default backoff
-- (exponential, 1 s doubling to 1 h: kyu_core's Backoff::default) stores
-- NULL instead of the same 73 bytes of JSON. It was a third of a plain
-- job's row, written again by the claim and by the completion (W1: about
-- 220 of 1,960 WAL bytes per job). Rows written before keep their JSON;
-- both read the same.
ALTER TABLE kyu_jobs ALTER COLUMN backoff DROP NOT NULL;
