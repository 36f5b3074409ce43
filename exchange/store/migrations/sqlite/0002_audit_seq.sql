-- The audit trail's order is its sequence number `seq` (AUTOINCREMENT: never reused). SQLite has one
-- writer at a time (BEGIN IMMEDIATE), so seq is handed out in commit order and a follower
-- (`exchange audit export --follow`) that resumes after the last seq it saw never misses a record.
ALTER TABLE audit_records RENAME COLUMN id TO seq;

-- `exchange audit list` filters (SQLite indexes end in the rowid, which is seq).
CREATE INDEX audit_records_request_id ON audit_records (request_id);
CREATE INDEX audit_records_sub ON audit_records (sub);
CREATE INDEX audit_records_client_id ON audit_records (client_id);
-- "Which decision issued this token?" is the question an incident starts with.
CREATE INDEX audit_records_jti ON audit_records (jti) WHERE jti IS NOT NULL;
