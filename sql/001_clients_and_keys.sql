-- The core of keysvc: clients, their key pairs, and the audit trail.
-- The key invariants of the design live here as constraints, so that no code
-- path, concurrent request or crashed replica can break them: one active and
-- one next key per client, only known states, no private member in a
-- published key, and no sealed blob left on an expired or revoked key.

CREATE TABLE clients (
    client_id                  text PRIMARY KEY
        CHECK (client_id ~ '^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$'),
    auth_method                text NOT NULL
        CHECK (auth_method IN ('private_key_jwt', 'client_secret_jwt')),
    key_source                 text NOT NULL
        CHECK (key_source IN ('generated', 'imported', 'remote')),
    alg                        text NOT NULL,
    key_size                   integer CHECK (key_size IN (2048, 3072, 4096)),
    rotation_period_seconds    bigint NOT NULL CHECK (rotation_period_seconds > 0),
    prepublish_period_seconds  bigint NOT NULL CHECK (prepublish_period_seconds >= 0),
    grace_period_seconds       bigint NOT NULL CHECK (grace_period_seconds >= 0),
    jwks_uri                   text,
    token_hash                 bytea NOT NULL UNIQUE,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    CHECK (prepublish_period_seconds <= rotation_period_seconds),
    CHECK ((key_source = 'remote') = (jwks_uri IS NOT NULL)),
    CHECK (auth_method = 'private_key_jwt' OR key_source = 'generated')
);

CREATE TABLE keys (
    client_id     text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    kid           text NOT NULL CHECK (length(kid) BETWEEN 1 AND 128),
    alg           text NOT NULL,
    state         text NOT NULL
        CHECK (state IN ('next', 'active', 'retired', 'expired', 'revoked')),
    origin        text NOT NULL CHECK (origin IN ('generated', 'imported')),
    public_jwk    jsonb NOT NULL
        CHECK (jsonb_typeof(public_jwk) = 'object'
               AND NOT public_jwk ?| ARRAY['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']),
    kek_id        text,
    sealed        bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz NOT NULL DEFAULT now(),
    activated_at  timestamptz,
    retired_at    timestamptz,
    ended_at      timestamptz,
    PRIMARY KEY (client_id, kid),
    CHECK ((kek_id IS NULL) = (sealed IS NULL)),
    CHECK (origin = 'generated' OR sealed IS NULL),
    -- a destroyed private part is gone from the row, not flagged
    CHECK (state NOT IN ('expired', 'revoked') OR sealed IS NULL),
    CHECK ((state IN ('expired', 'revoked')) = (ended_at IS NOT NULL)),
    CHECK (state <> 'active' OR activated_at IS NOT NULL),
    CHECK (state <> 'retired' OR retired_at IS NOT NULL)
);

CREATE UNIQUE INDEX keys_one_active_per_client ON keys (client_id) WHERE state = 'active';
CREATE UNIQUE INDEX keys_one_next_per_client ON keys (client_id) WHERE state = 'next';
CREATE INDEX keys_published ON keys (client_id) WHERE state IN ('next', 'active', 'retired');

-- No foreign key: the trail of a client outlives the client.
CREATE TABLE events (
    event_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id  text NOT NULL,
    kind       text NOT NULL,
    kid        text,
    actor      text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
    at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_by_client ON events (client_id, event_id);
