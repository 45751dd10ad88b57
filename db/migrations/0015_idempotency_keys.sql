-- Idempotency keys for the API's writes (db/schema/idempotency.sql).
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
