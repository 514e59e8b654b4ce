-- Client assertions (RFC 7523). Three things must hold across every replica,
-- so they live in the database: a verifier token is bound to its audiences;
-- an accepted assertion's jti is recorded once per client (the primary key
-- makes the same assertion presented to two replicas at once pass once); and
-- a client_secret_jwt client has one current secret, at most one previous one
-- still inside its grace period, and no secret material left once destroyed.

CREATE TABLE verifiers (
    verifier_id  text PRIMARY KEY CHECK (verifier_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    audiences    text[] NOT NULL
        CHECK (cardinality(audiences) BETWEEN 1 AND 20
               AND array_position(audiences, NULL) IS NULL),
    require_typ  boolean NOT NULL DEFAULT false,
    token_hash   bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- No foreign key to clients: the insert on the hot path of /verify takes no
-- lock on the client's row, and a deleted client's rows still expire. Rows
-- are kept until the assertion's exp plus the leeway, then purged.
CREATE TABLE used_jtis (
    client_id   text NOT NULL,
    jti         text NOT NULL CHECK (length(jti) BETWEEN 1 AND 256),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);

CREATE INDEX used_jtis_by_expiry ON used_jtis (expires_at);

-- The HMAC secrets of client_secret_jwt clients, sealed like private keys
-- (AES-256-GCM under a KEK, the client id and secret id as associated data).
CREATE TABLE client_secrets (
    client_id    text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    secret_id    text NOT NULL CHECK (secret_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    state        text NOT NULL CHECK (state IN ('current', 'previous', 'destroyed')),
    kek_id       text,
    sealed       bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- when a previous secret stops being accepted: its demotion plus grace
    valid_until  timestamptz,
    ended_at     timestamptz,
    PRIMARY KEY (client_id, secret_id),
    CHECK ((kek_id IS NULL) = (sealed IS NULL)),
    -- a destroyed secret is gone from the row, not flagged
    CHECK ((state = 'destroyed') = (sealed IS NULL)),
    CHECK ((state = 'destroyed') = (ended_at IS NOT NULL)),
    CHECK ((state = 'previous') = (valid_until IS NOT NULL))
);

CREATE UNIQUE INDEX client_secrets_one_current ON client_secrets (client_id)
    WHERE state = 'current';
CREATE UNIQUE INDEX client_secrets_one_previous ON client_secrets (client_id)
    WHERE state = 'previous';
