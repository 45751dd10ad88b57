-- migrate:no-transaction
-- A user's intro requests, newest first, walked from an index (GET /api/intro-requests): the
-- single-column indexes on the requester and the target become (user, created_at, id), which still
-- serve the foreign keys' cascades. Built without blocking writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS intro_requests_requester_page_idx
    ON intro_requests (requester_id, created_at, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS intro_requests_target_page_idx ON intro_requests (target_id, created_at, id);
DROP INDEX CONCURRENTLY IF EXISTS intro_requests_requester_id_idx;
DROP INDEX CONCURRENTLY IF EXISTS intro_requests_target_id_idx;
