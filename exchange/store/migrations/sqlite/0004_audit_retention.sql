-- Retention (`[audit] retention`) and the counts of unauthenticated denials.

-- The trail stays append-only, with one exception: the retention purge may delete a record older
-- than an hour (the shortest retention is a day). No code path or bug can delete a fresh record, so
-- the record of a token that may still be alive is never lost. (strftime, not unixepoch(): SQLite
-- before 3.38 has no unixepoch.)
DROP TRIGGER audit_records_no_delete;
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
WHEN OLD.time >= CAST(strftime('%s', 'now') AS INTEGER) - 3600
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;

-- Denials before client authentication, one row per window and key, counts added up (upsert).
-- '' stands for "not given" in the key columns.
CREATE TABLE unauthenticated_denials (
    window_start   INTEGER NOT NULL,
    window_seconds INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    error          TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    source         TEXT NOT NULL,
    count          INTEGER NOT NULL,
    PRIMARY KEY (window_start, reason, error, client_id, source)
);
