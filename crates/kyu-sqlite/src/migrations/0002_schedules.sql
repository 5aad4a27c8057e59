-- kyu on SQLite, schema version 2: cron schedules.
CREATE TABLE kyu_schedules (
    name        TEXT PRIMARY KEY,
    cron        TEXT    NOT NULL,
    timezone    TEXT    NOT NULL,
    job         TEXT    NOT NULL,   -- JSON job template
    catchup     INTEGER NOT NULL,
    enabled     INTEGER NOT NULL,
    next_run_at TEXT,               -- the first tick not yet fired; NULL when disabled
    last_run_at TEXT,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
) WITHOUT ROWID;
