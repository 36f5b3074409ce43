-- Embedded store: the same tables as PostgreSQL, in SQLite's dialect.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),
    created_at  REAL NOT NULL,
    retired_at  REAL,
    public_jwk  TEXT NOT NULL,
    private_jwk BLOB NOT NULL
);
-- At most one active key, enforced by the database rather than by care.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'active';

CREATE TABLE audit_records (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        REAL NOT NULL,
    request_id  TEXT NOT NULL,
    decision    TEXT NOT NULL,
    client_id   TEXT,
    issuer      TEXT,
    sub         TEXT,
    purpose     TEXT,
    audience    TEXT,
    error       TEXT,
    denial      TEXT,
    reason      TEXT,
    jti         TEXT,
    exp         INTEGER,
    actor       TEXT,
    rules       TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX audit_records_time ON audit_records (time);
-- Append-only: the database refuses edits, whatever the code does.
CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;

CREATE TABLE replay_records (
    issuer      TEXT NOT NULL,
    jti         TEXT NOT NULL,
    expires_at  REAL NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX replay_records_expiry ON replay_records (expires_at);

CREATE TABLE rate_counters (
    key          TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    expires_at   REAL NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX rate_counters_expiry ON rate_counters (expires_at);
