-- kyu on PostgreSQL, schema version 5: job logs (a command's stderr, a
-- handler's ctx.log), per attempt, bounded, deleted with their job.
CREATE TABLE kyu_job_logs (
    job_seq bigint      NOT NULL,
    attempt integer     NOT NULL,
    n       integer     NOT NULL,   -- line number within the attempt
    at      timestamptz NOT NULL,
    line    text        NOT NULL,
    PRIMARY KEY (job_seq, attempt, n)
);
-- Per attempt: bytes kept, the next line number, lines dropped to stay under the bound.
CREATE TABLE kyu_job_log_sizes (
    job_seq bigint  NOT NULL,
    attempt integer NOT NULL,
    bytes   bigint  NOT NULL,
    next_n  integer NOT NULL,
    dropped bigint  NOT NULL,
    PRIMARY KEY (job_seq, attempt)
);
