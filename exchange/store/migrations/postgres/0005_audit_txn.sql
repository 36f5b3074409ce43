-- The transaction of a Txn-Token decision (draft-ietf-oauth-transaction-tokens-10 §13.2: the txn,
-- logged by the TTS and the workloads, ties every decision of one call chain together). Numbered 0005:
-- the numbers before it belong to changes that landed first; the runner applies what is missing.
ALTER TABLE audit_records ADD COLUMN txn text;
CREATE INDEX audit_records_txn ON audit_records (txn, seq) WHERE txn IS NOT NULL;
