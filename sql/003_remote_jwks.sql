-- The last good JWK Set fetched from each remote client's jwks_uri, with the
-- metadata of its fetches, so that a restarted or added replica serves it at
-- once without asking the upstream, and every replica agrees on freshness
-- and on the per-client rate limit of refetches (both on the database clock).
--
-- A row belongs to the jwks_uri it was fetched from: after the client's
-- jwks_uri changes, readers ignore a row whose jwks_uri differs, until the
-- first fetch from the new address replaces it. keys is NULL until a fetch
-- succeeds; the same checks as on the keys table keep private members out.

CREATE TABLE remote_jwks (
    client_id      text PRIMARY KEY REFERENCES clients (client_id) ON DELETE CASCADE,
    jwks_uri       text NOT NULL,
    keys           jsonb
        CHECK (keys IS NULL OR (
            jsonb_typeof(keys) = 'array'
            AND NOT jsonb_path_exists(keys, '$[*] ? (exists(@.d) || exists(@.p)
                || exists(@.q) || exists(@.dp) || exists(@.dq) || exists(@.qi)
                || exists(@.oth) || exists(@.k) || exists(@.priv))'))),
    upstream_etag  text CHECK (length(upstream_etag) <= 1024),
    -- the last time the upstream answered with a good set or a 304
    fetched_at     timestamptz,
    fresh_until    timestamptz,
    -- the start of the last fetch, successful or not: the refetch rate limit
    attempted_at   timestamptz NOT NULL DEFAULT now(),
    failures       integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    last_error     text CHECK (length(last_error) <= 500),
    -- keys the last good document held that keysvc left out, by reason
    skipped        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(skipped) = 'object'),
    CHECK ((keys IS NULL) = (fetched_at IS NULL)),
    CHECK ((fetched_at IS NULL) = (fresh_until IS NULL))
);

-- The scheduler's refresh-ahead scan walks the sets closest to expiry.
CREATE INDEX remote_jwks_by_freshness ON remote_jwks (fresh_until);
