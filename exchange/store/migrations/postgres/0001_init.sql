-- Production store: the same tables as the embedded SQLite store, in PostgreSQL's dialect.
-- Applied by exchange.store.migrate inside one transaction under an advisory lock: no BEGIN/COMMIT here.

CREATE TABLE signing_keys (
    kid         text PRIMARY KEY,
    alg         text NOT NULL,
    state       text NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),
    created_at  double precision NOT NULL,
    -- When the key stopped signing (became retiring); NULL while it is active or never was.
    retired_at  double precision,
    public_jwk  text NOT NULL,
    -- AES-GCM ciphertext under the KEK; the database never sees a private key in the clear.
    private_jwk bytea NOT NULL
);
-- At most one active key, enforced by the database rather than by care (two replicas rotating at once).
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'active';

-- Every replica refreshes its key ring when this number moves. A trigger bumps it and notifies
-- listeners, so a rotation by the CLI, another replica or hand-written SQL is seen the same way;
-- NOTIFY is delivered at commit, never for a rolled-back change.
CREATE TABLE key_ring_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL
);
INSERT INTO key_ring_version (singleton, version) VALUES (true, 0);

CREATE FUNCTION signing_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    UPDATE key_ring_version SET version = version + 1 RETURNING version INTO v;
    PERFORM pg_notify('exchange_keys', v::text);
    RETURN NULL;
END;
$$;
CREATE TRIGGER signing_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION signing_keys_changed();

CREATE TABLE audit_records (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time        double precision NOT NULL,
    request_id  text NOT NULL,
    decision    text NOT NULL CHECK (decision IN ('granted', 'denied')),
    client_id   text,
    issuer      text,
    sub         text,
    purpose     text,
    audience    text,
    error       text,
    denial      text,
    reason      text,
    jti         text,
    exp         bigint,
    actor       text,
    rules       jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX audit_records_time ON audit_records (time DESC, id DESC);
-- "Which decision issued this token?" is the question an incident starts with.
CREATE INDEX audit_records_jti ON audit_records (jti) WHERE jti IS NOT NULL;

-- Append-only: the database refuses edits, whatever the code does. An operator archiving old rows
-- does so deliberately, as the table owner: ALTER TABLE audit_records DISABLE TRIGGER USER.
CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_records_no_update BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_append_only();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_records FROM PUBLIC;

CREATE TABLE replay_records (
    issuer      text NOT NULL,
    jti         text NOT NULL,
    expires_at  double precision NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX replay_records_expiry ON replay_records (expires_at);

CREATE TABLE rate_counters (
    key          text NOT NULL,
    window_start bigint NOT NULL,
    count        bigint NOT NULL,
    expires_at   double precision NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX rate_counters_expiry ON rate_counters (expires_at);
