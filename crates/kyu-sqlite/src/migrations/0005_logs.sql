-- kyu on SQLite, schema version 5: job logs (a command's stderr, a
-- handler's ctx.log), per attempt, bounded, deleted with their job.
CREATE TABLE kyu_job_logs (
    job_seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    n       INTEGER NOT NULL,   -- line number within the attempt
    at      TEXT    NOT NULL,
    line    TEXT    NOT NULL,
    PRIMARY KEY (job_seq, attempt, n)
) WITHOUT ROWID;
-- Per attempt: bytes kept, the next line number, lines dropped to stay under the bound.
CREATE TABLE kyu_job_log_sizes (
    job_seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    bytes   INTEGER NOT NULL,
    next_n  INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    PRIMARY KEY (job_seq, attempt)
) WITHOUT ROWID;
