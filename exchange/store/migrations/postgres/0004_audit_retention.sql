-- Retention (`[audit] retention`) and the counts of unauthenticated denials.
-- Applied by exchange.store.migrate inside one transaction under an advisory lock: no BEGIN/COMMIT here.

-- The trail stays append-only, with one exception: the retention purge may delete a record older
-- than an hour (by the database's clock). No code path, bug or hand-written statement can delete or
-- edit a fresh record, so the record of a token that may still be alive is never lost. The shortest
-- retention is a day, so clock skew between a replica and the database never trips this.
CREATE OR REPLACE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.time < extract(epoch FROM now()) - 3600 THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit records are append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- Denials before client authentication, one row per window and key, counts added by every replica
-- (upsert). '' stands for "not given" in the key columns, so the primary key can hold them.
CREATE TABLE unauthenticated_denials (
    window_start   bigint NOT NULL,
    window_seconds integer NOT NULL,
    reason         text NOT NULL,
    error          text NOT NULL,
    client_id      text NOT NULL,
    source         text NOT NULL,
    count          bigint NOT NULL,
    PRIMARY KEY (window_start, reason, error, client_id, source)
);
