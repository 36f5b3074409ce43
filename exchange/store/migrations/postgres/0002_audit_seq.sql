-- The audit trail's order is its sequence number `seq`, assigned in commit order, so a follower
-- (`exchange audit export --follow`) that resumes after the last seq it saw never misses a record.
-- Applied by exchange.store.migrate inside one transaction under an advisory lock: no BEGIN/COMMIT here.
ALTER TABLE audit_records RENAME COLUMN id TO seq;

-- Identity values are handed out when a row is inserted, not when it commits: without more, two
-- replicas' batches could commit out of order (seq 11 visible before seq 10), and a follower that had
-- read 11 would never see 10. This statement-level trigger runs before any row of an INSERT gets its
-- seq and takes a transaction-scoped lock that is held until commit: audit batches (from every replica,
-- or hand-written SQL) commit one at a time, in seq order. One lock per batch, not per row; with group
-- commit a busy replica writes one batch at a time anyway.
CREATE FUNCTION audit_records_in_seq_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(8103508931520062513);  -- 0x7075727061756431, "purpaud1"
    RETURN NULL;
END;
$$;
CREATE TRIGGER audit_records_in_seq_order BEFORE INSERT ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_in_seq_order();

-- `exchange audit list` filters; each index ends in seq, the listing's order.
CREATE INDEX audit_records_request_id ON audit_records (request_id, seq);
CREATE INDEX audit_records_sub ON audit_records (sub, seq);
CREATE INDEX audit_records_client_id ON audit_records (client_id, seq);
