-- The signing-key lifecycle (docs/OPERATIONS.md, "Signing keys"): next (published, not signing) ->
-- current (signs; exactly one) -> previous (published, not signing) -> retired (unpublished, its
-- private half destroyed). The old states map onto it: active -> current, retiring -> previous; a key
-- already retired loses its private half here. SQLite cannot change a CHECK in place: the table is
-- rebuilt. Timestamps: activated_at (began signing), deactivated_at (stopped signing), retired_at
-- (unpublished); kek_id names the KEK its private half is sealed under (NULL: sealed before ids).
CREATE TABLE signing_keys_lifecycle (
    kid            TEXT PRIMARY KEY,
    alg            TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('next', 'current', 'previous', 'retired')),
    created_at     REAL NOT NULL,
    activated_at   REAL,
    deactivated_at REAL,
    retired_at     REAL,
    revoked        INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
    kek_id         TEXT,
    public_jwk     TEXT NOT NULL,
    private_jwk    BLOB,
    -- A retired key has no private half; every other key has one. The database keeps this, not care.
    CHECK ((state = 'retired') = (private_jwk IS NULL))
);
INSERT INTO signing_keys_lifecycle
    (kid, alg, state, created_at, activated_at, deactivated_at, retired_at, public_jwk, private_jwk)
SELECT kid,
       alg,
       CASE state WHEN 'active' THEN 'current' WHEN 'retiring' THEN 'previous' ELSE 'retired' END,
       created_at,
       CASE WHEN state <> 'retired' THEN created_at END,
       retired_at,
       CASE WHEN state = 'retired' THEN COALESCE(retired_at, created_at) END,
       public_jwk,
       CASE WHEN state = 'retired' THEN NULL ELSE private_jwk END
FROM signing_keys;
DROP TABLE signing_keys;
ALTER TABLE signing_keys_lifecycle RENAME TO signing_keys;
-- At most one current and at most one next key, enforced by the database (replicas and CLI runs race).
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (state) WHERE state = 'current';
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys (state) WHERE state = 'next';
