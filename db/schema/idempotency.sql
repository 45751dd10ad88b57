-- Idempotency keys (the IETF draft "The Idempotency-Key HTTP Header Field"): a client that retries a
-- write whose answer it never saw (a cut connection, a timeout, a crash between the commit and the
-- answer) sends the same Idempotency-Key header and gets the first answer back instead of a second
-- write (services/api/idempotency.py). The key is claimed, the write made and its answer recorded
-- in one transaction: a write and its recorded answer commit together or not at all, and a retry
-- that arrives while the first is still running waits for it on the key's row. Keys are the
-- caller's own (one user's never meets another's) and live API_IDEMPOTENCY_TTL_SECONDS (a day);
-- the refresher prunes the expired ones.
CREATE TABLE idempotency_keys (
    user_id     bigint      NOT NULL,  -- no foreign key: a deleted user's keys expire like any
    key         text        NOT NULL,
    fingerprint bytea       NOT NULL,  -- sha256 of the method, the path and the body
    status      smallint,              -- the recorded answer, set before the claim commits
    body        bytea,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- name: idempotency_claim
-- The key for this write: a row when it is new (or its old use has expired), none when it is taken.
-- A claim still uncommitted is waited for.
INSERT INTO idempotency_keys AS k (user_id, key, fingerprint) VALUES (%(user)s, %(key)s, %(fingerprint)s)
ON CONFLICT (user_id, key) DO UPDATE
    SET fingerprint = excluded.fingerprint, status = NULL, body = NULL, created_at = now()
    WHERE k.created_at < now() - make_interval(secs => %(ttl)s)
RETURNING true

-- name: idempotency_answer
SELECT fingerprint, status, body FROM idempotency_keys WHERE user_id = %(user)s AND key = %(key)s

-- name: idempotency_record
UPDATE idempotency_keys SET status = %(status)s, body = %(body)s WHERE user_id = %(user)s AND key = %(key)s

-- name: idempotency_prune
DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => %(ttl)s)
