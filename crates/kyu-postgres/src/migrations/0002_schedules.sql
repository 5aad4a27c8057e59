-- kyu on PostgreSQL, schema version 2: cron schedules.
CREATE TABLE kyu_schedules (
    name        text PRIMARY KEY,
    cron        text        NOT NULL,
    timezone    text        NOT NULL,
    job         jsonb       NOT NULL,  -- the job template
    catchup     boolean     NOT NULL,
    enabled     boolean     NOT NULL,
    next_run_at timestamptz,           -- the first tick not yet fired; NULL when disabled
    last_run_at timestamptz,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
