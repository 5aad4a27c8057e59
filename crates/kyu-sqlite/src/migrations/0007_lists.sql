-- kyu on SQLite, schema version 7: listing indexes that transitions every
-- job takes never write to.
--
-- (queue, state, seq) over every row changed at each transition: the claim
-- and the completion each deleted one entry and inserted another, on the
-- writer's one thread (W1: about 15 % of its time). Jobs waiting to run and
-- jobs that failed or were cancelled are listed from partial indexes;
-- running jobs from kyu_jobs_running; completed jobs newest first along the
-- rowid, which finds a page at once where completed jobs are most of what is
-- kept. The predicates are ORs: SQLite proves `state = 'x'` implies them.
DROP INDEX kyu_jobs_queue_state;
CREATE INDEX kyu_jobs_waiting_list ON kyu_jobs (queue, state, seq)
    WHERE state = 'scheduled' OR state = 'queued' OR state = 'waiting';
CREATE INDEX kyu_jobs_dead_list ON kyu_jobs (queue, state, seq)
    WHERE state = 'failed' OR state = 'cancelled';
