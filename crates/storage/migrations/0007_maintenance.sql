-- When periodic maintenance last ran (the blob sweep, crates/storage/src/sweep.rs),
-- shared by every storage replica so that a task runs once per interval
-- however many replicas look whether it is due.
CREATE TABLE maintenance (
    name     TEXT PRIMARY KEY,
    last_run TIMESTAMPTZ NOT NULL
);
