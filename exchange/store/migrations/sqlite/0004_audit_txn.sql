-- The transaction of a Txn-Token decision (draft-ietf-oauth-transaction-tokens-10 §13.2: the txn,
-- logged by the TTS and the workloads, ties every decision of one call chain together). Numbered 0004:
-- 0003 belongs to the key lifecycle change landing separately; the runner applies what is missing.
ALTER TABLE audit_records ADD COLUMN txn TEXT;
CREATE INDEX audit_records_txn ON audit_records (txn) WHERE txn IS NOT NULL;
