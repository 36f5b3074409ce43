-- The W3C trace id of the request that made the decision (when tracing is on), so an audit record
-- leads to its trace. Applied by exchange.store.migrate inside one transaction: no BEGIN/COMMIT here.
ALTER TABLE audit_records ADD COLUMN trace_id TEXT;
