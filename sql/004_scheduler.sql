-- The scheduler's bookkeeping. Every serve process runs the scheduler over
-- one database, so each piece of work must be claimed by exactly one replica,
-- and a replica killed in the middle of its work must not keep it forever.
--
-- A due client is claimed for rotation with a lease on the database clock
-- (rotation_claimed_until), set in a short transaction; its keys are then
-- generated with no row lock or connection held, and each client is rotated
-- in its own transaction, which re-checks that it is still due and clears
-- the lease. A lease that runs out (its replica died) makes the client
-- claimable again. rotation_claimed_by names the replica (host:pid) that
-- holds the lease, for the operator who wonders where a rotation went.
--
-- An imported client overdue for rotation is reported once per active key
-- (overdue_reported_kid), not once per tick per replica.

ALTER TABLE clients ADD COLUMN rotation_claimed_until timestamptz;
ALTER TABLE clients ADD COLUMN rotation_claimed_by text;
ALTER TABLE clients ADD COLUMN overdue_reported_kid text;

-- The scheduler's scans, oldest first: active keys by age (rotation, the
-- overdue report, the age gauge), retired keys by retirement (expiry), and
-- expired keys by end (the purge of rows past their retention).
CREATE INDEX keys_active_by_age ON keys (activated_at) WHERE state = 'active';
CREATE INDEX keys_retired_by_age ON keys (retired_at) WHERE state = 'retired';
CREATE INDEX keys_expired_by_age ON keys (ended_at) WHERE state = 'expired';
