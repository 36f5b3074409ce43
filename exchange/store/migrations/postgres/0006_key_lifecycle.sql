-- The signing-key lifecycle (docs/OPERATIONS.md, "Signing keys"): next (published, not signing) ->
-- current (signs; exactly one) -> previous (published, not signing) -> retired (unpublished, its
-- private half destroyed). The old states map onto it: active -> current, retiring -> previous; a key
-- already retired loses its private half here. Timestamps: activated_at (began signing),
-- deactivated_at (stopped signing; the old retired_at), retired_at (unpublished); kek_id names the KEK
-- its private half is sealed under (NULL: sealed before ids existed).
ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_state_check;
DROP INDEX signing_keys_one_active;
ALTER TABLE signing_keys RENAME COLUMN retired_at TO deactivated_at;
ALTER TABLE signing_keys
    ADD COLUMN activated_at double precision,
    ADD COLUMN retired_at double precision,
    ADD COLUMN revoked boolean NOT NULL DEFAULT false,
    ADD COLUMN kek_id text,
    ALTER COLUMN private_jwk DROP NOT NULL;
UPDATE signing_keys SET state = 'current', activated_at = created_at WHERE state = 'active';
UPDATE signing_keys SET state = 'previous', activated_at = created_at WHERE state = 'retiring';
UPDATE signing_keys SET retired_at = COALESCE(deactivated_at, created_at), private_jwk = NULL
    WHERE state = 'retired';
ALTER TABLE signing_keys
    ADD CONSTRAINT signing_keys_state_check CHECK (state IN ('next', 'current', 'previous', 'retired')),
    -- A retired key has no private half; every other key has one. The database keeps this, not care.
    ADD CONSTRAINT signing_keys_retired_destroyed CHECK ((state = 'retired') = (private_jwk IS NULL));
-- At most one current and at most one next key, enforced by the database (replicas and CLI runs race).
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (state) WHERE state = 'current';
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys (state) WHERE state = 'next';
