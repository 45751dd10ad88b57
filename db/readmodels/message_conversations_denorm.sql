-- message_conversations_denorm: one row per (user, other user) pair that has exchanged a message,
-- seen from the user's side, exact at every commit.
--
-- Kept by a delta ledger (db/schema/ledgers.sql): one row per direction of a conversation, and
-- both directions always change together. A delta also marks its pair "dirty": until it is
-- folded, the view finds the pair's latest message live (an index probe) instead of trusting the
-- base row's copy, so an edited, deleted or back-dated message is never shown stale.

CREATE TABLE conversation_base (
    user_id              bigint      NOT NULL,
    other_user_id        bigint      NOT NULL,
    last_message_id      bigint,
    last_message_at      timestamptz,
    last_message_preview text,
    last_sender_id       bigint,
    message_count        bigint      NOT NULL DEFAULT 0,
    unread_count         bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, other_user_id)
) WITH (fillfactor = 90);
-- The fold updates a row's counts and last message, none of them indexed, so the update can be
-- HOT (the new version on the same page, no index entry): with room left on each page for it, and
-- no index on a count (one on `message_count <= 0` made every update write the primary key's
-- index too; the fold now finds the rows it emptied by their keys). Measured in
-- docs/performance.md ("WAL by relation").

CREATE TABLE conversation_deltas (
    user_id       bigint      NOT NULL,
    other_user_id bigint      NOT NULL,
    messages      bigint      NOT NULL DEFAULT 0,
    unread        bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversation_deltas_pair_idx ON conversation_deltas (user_id, other_user_id);
ALTER TABLE conversation_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                     autovacuum_vacuum_insert_scale_factor = 0,
                                     autovacuum_vacuum_insert_threshold = 5000);

-- The latest message between two users, either way round: the greatest (created_at, id), found by
-- two probes of messages_pair_idx. One SQL SELECT, so the planner inlines it into the views and
-- the fold that call it.
CREATE FUNCTION latest_message(a bigint, b bigint, wanted boolean DEFAULT true)
RETURNS TABLE (id bigint, created_at timestamptz, body text, sender_id bigint)
LANGUAGE sql STABLE AS $$
    SELECT m.id, m.created_at, m.body, m.sender_id
    FROM (
        (SELECT id, created_at, body, sender_id FROM messages
         WHERE sender_id = a AND recipient_id = b
         ORDER BY created_at DESC, id DESC LIMIT 1)
        UNION ALL
        (SELECT id, created_at, body, sender_id FROM messages
         WHERE sender_id = b AND recipient_id = a
         ORDER BY created_at DESC, id DESC LIMIT 1)
    ) m
    WHERE wanted
    ORDER BY m.created_at DESC, m.id DESC
    LIMIT 1
$$;

-- The truth, from the source tables alone. A filter on user_id reaches both scans of messages
-- (by sender, by recipient: the reconciler reads a key range at a time).
CREATE VIEW message_conversations_denorm_truth AS
SELECT s.user_id, s.other_user_id,
       l.id AS last_message_id, l.created_at AS last_message_at, left(l.body, 120) AS last_message_preview,
       l.sender_id AS last_sender_id, s.message_count, s.unread_count
FROM (
    SELECT user_id, other_user_id, count(*) AS message_count, count(*) FILTER (WHERE unread) AS unread_count
    FROM (SELECT sender_id AS user_id, recipient_id AS other_user_id, false AS unread FROM messages
          UNION ALL
          SELECT recipient_id, sender_id, read_at IS NULL FROM messages) sides
    GROUP BY user_id, other_user_id
) s
CROSS JOIN LATERAL latest_message(s.user_id, s.other_user_id) l;

-- The read model: the base plus the pending deltas.
CREATE VIEW message_conversations_denorm AS
SELECT k.user_id,
       k.other_user_id,
       CASE WHEN d.n > 0 THEN l.id ELSE b.last_message_id END                   AS last_message_id,
       CASE WHEN d.n > 0 THEN l.created_at ELSE b.last_message_at END           AS last_message_at,
       CASE WHEN d.n > 0 THEN left(l.body, 120) ELSE b.last_message_preview END AS last_message_preview,
       CASE WHEN d.n > 0 THEN l.sender_id ELSE b.last_sender_id END             AS last_sender_id,
       coalesce(b.message_count, 0) + coalesce(d.messages, 0)                   AS message_count,
       coalesce(b.unread_count, 0) + coalesce(d.unread, 0)                      AS unread_count
FROM (
    SELECT user_id, other_user_id FROM conversation_base
    UNION
    SELECT user_id, other_user_id FROM conversation_deltas
) k
LEFT JOIN conversation_base b ON b.user_id = k.user_id AND b.other_user_id = k.other_user_id
LEFT JOIN LATERAL (
    SELECT count(*) AS n, sum(x.messages)::bigint AS messages, sum(x.unread)::bigint AS unread
    FROM conversation_deltas x WHERE x.user_id = k.user_id AND x.other_user_id = k.other_user_id
) d ON true
-- Only a pair with pending deltas needs the live probe (`wanted` becomes a one-time filter).
LEFT JOIN LATERAL latest_message(k.user_id, k.other_user_id, d.n > 0) l ON true
WHERE coalesce(b.message_count, 0) + coalesce(d.messages, 0) > 0;

-- ---------------------------------------------------------------------------------------------
-- Maintenance: the triggers.

-- Everything kept for a user that goes, or whose id comes (back), in both directions of their
-- conversations: nothing of an earlier holder of the id survives.
SELECT ledger_triggers('users', 'conversations', $body$
    WITH ends AS (
        SELECT id FROM {changes} c GROUP BY id HAVING bool_and(sign < 0) OR bool_and(sign > 0)
    ), mine AS (
        SELECT user_id, other_user_id FROM conversation_base WHERE user_id IN (SELECT id FROM ends)
        UNION
        SELECT user_id, other_user_id FROM conversation_deltas WHERE user_id IN (SELECT id FROM ends)
    ), pairs AS (
        SELECT user_id, other_user_id FROM mine UNION SELECT other_user_id, user_id FROM mine
    ), base_gone AS (
        DELETE FROM conversation_base b USING pairs p
        WHERE b.user_id = p.user_id AND b.other_user_id = p.other_user_id
    )
    DELETE FROM conversation_deltas d USING pairs p
    WHERE d.user_id = p.user_id AND d.other_user_id = p.other_user_id;
$body$, rebuild => 'conversations_rebuild');

-- Both directions of every touched pair. Rows are kept even when they net to zero: an edited body
-- or timestamp may change which message is the latest, and the row marks the pair dirty.
SELECT ledger_triggers('messages', 'conversations', $body$
    INSERT INTO conversation_deltas (user_id, other_user_id, messages, unread)
    SELECT user_id, other_user_id, sum(sign), sum(sign * unread)
    FROM (SELECT sender_id AS user_id, recipient_id AS other_user_id, sign, 0 AS unread FROM {changes} c
          UNION ALL
          SELECT recipient_id, sender_id, sign, (read_at IS NULL)::int FROM {changes} c) s
    GROUP BY user_id, other_user_id;
$body$, rebuild => 'conversations_rebuild');

-- One pass over the source; see project_counters_rebuild().
CREATE FUNCTION conversations_rebuild() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE conversation_base, conversation_deltas;
    INSERT INTO conversation_base (user_id, other_user_id, last_message_id, last_message_at,
                                   last_message_preview, last_sender_id, message_count, unread_count)
    SELECT user_id, other_user_id, last_message_id, last_message_at, last_message_preview, last_sender_id,
           message_count, unread_count
    FROM message_conversations_denorm_truth;
$$;

-- The fold's step; see project_counters_fold(). Both directions of a pair fold together, and only
-- when both users are locked.
CREATE FUNCTION conversations_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    ca bigint[];
    cb bigint[];
BEGIN
    SELECT coalesce(array_agg(a), '{}'), coalesce(array_agg(b), '{}') INTO ca, cb FROM (
        SELECT DISTINCT least(user_id, other_user_id) AS a, greatest(user_id, other_user_id) AS b
        FROM (SELECT DISTINCT user_id, other_user_id FROM conversation_deltas
              ORDER BY user_id, other_user_id LIMIT max_keys) k) c;
    SELECT coalesce(array_agg(id), '{}') INTO ids FROM (
        SELECT u.id FROM users u
        WHERE u.id IN (SELECT unnest(ca) UNION SELECT unnest(cb))
        ORDER BY u.id FOR KEY SHARE SKIP LOCKED) s;
    WITH locked AS (
        SELECT unnest(ids) AS id
    ), pairs AS (
        SELECT c.a, c.b FROM unnest(ca, cb) AS c(a, b)
        JOIN locked la ON la.id = c.a JOIN locked lb ON lb.id = c.b
    ), dirs AS (
        SELECT a AS user_id, b AS other_user_id FROM pairs UNION ALL SELECT b, a FROM pairs
    ), moved AS (
        DELETE FROM conversation_deltas d USING dirs p
        WHERE d.user_id = p.user_id AND d.other_user_id = p.other_user_id
        RETURNING d.user_id, d.other_user_id, d.messages, d.unread
    ), agg AS (
        SELECT user_id, other_user_id, sum(messages) AS m, sum(unread) AS u, count(*) AS n
        FROM moved GROUP BY user_id, other_user_id
    ), up AS (
        INSERT INTO conversation_base AS cbase (user_id, other_user_id, message_count, unread_count,
                                                last_message_id, last_message_at, last_message_preview,
                                                last_sender_id)
        SELECT a.user_id, a.other_user_id, a.m, a.u, l.id, l.created_at, left(l.body, 120), l.sender_id
        FROM agg a
        LEFT JOIN LATERAL latest_message(a.user_id, a.other_user_id) l ON true
        ON CONFLICT (user_id, other_user_id) DO UPDATE SET
            message_count = cbase.message_count + excluded.message_count,
            unread_count = cbase.unread_count + excluded.unread_count,
            last_message_id = excluded.last_message_id,
            last_message_at = excluded.last_message_at,
            last_message_preview = excluded.last_message_preview,
            last_sender_id = excluded.last_sender_id
    )
    SELECT count(*), coalesce(sum(n), 0) INTO keys_folded, deltas_folded FROM agg;
    -- The rows this fold emptied (no other writer leaves a row without messages).
    DELETE FROM conversation_base WHERE ctid IN (
        SELECT x.ctid FROM conversation_base x
        JOIN unnest(ca || cb, cb || ca) AS p(user_id, other_user_id)
            ON x.user_id = p.user_id AND x.other_user_id = p.other_user_id
        WHERE x.message_count <= 0
        FOR UPDATE OF x SKIP LOCKED);
    -- Pairs with a user deleted for good: nothing of them may remain, in either direction.
    WITH gone AS (
        SELECT c.a, c.b FROM unnest(ca, cb) AS c(a, b)
        WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = c.a)
           OR NOT EXISTS (SELECT 1 FROM users u WHERE u.id = c.b)
    ), dirs AS (
        SELECT a AS user_id, b AS other_user_id FROM gone UNION ALL SELECT b, a FROM gone
    ), base_gone AS (
        DELETE FROM conversation_base WHERE ctid IN (
            SELECT x.ctid FROM conversation_base x JOIN dirs p
                ON x.user_id = p.user_id AND x.other_user_id = p.other_user_id
            FOR UPDATE OF x SKIP LOCKED)
    )
    DELETE FROM conversation_deltas WHERE ctid IN (
        SELECT x.ctid FROM conversation_deltas x JOIN dirs p
            ON x.user_id = p.user_id AND x.other_user_id = p.other_user_id
        FOR UPDATE OF x SKIP LOCKED);
    RETURN NEXT;
END $$;

-- The reconciler's repair of these users' conversations (each seen from the user's side).
CREATE FUNCTION conversations_repair(keys bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- Rows of a pair one of whose users is gone: nothing can fold them, and the truth has no such pair.
    WITH gone AS (
        DELETE FROM conversation_base b
        WHERE b.user_id = ANY (keys)
          AND (NOT EXISTS (SELECT 1 FROM users u WHERE u.id = b.user_id)
               OR NOT EXISTS (SELECT 1 FROM users u WHERE u.id = b.other_user_id))
        RETURNING b.user_id, b.other_user_id
    )
    DELETE FROM conversation_deltas d USING gone
    WHERE d.user_id = gone.user_id AND d.other_user_id = gone.other_user_id;
    -- A correction for each direction that differs from the truth, even a zero one: a pending
    -- delta makes the view find the pair's latest message live, and the fold writes it into the
    -- base row. The counts are corrected against the base plus the pending deltas, as the view sums
    -- them, whether or not the view shows the pair.
    INSERT INTO conversation_deltas (user_id, other_user_id, messages, unread)
    WITH t AS MATERIALIZED (
        SELECT * FROM message_conversations_denorm_truth WHERE user_id = ANY (keys)
    ), m AS MATERIALIZED (
        SELECT * FROM message_conversations_denorm WHERE user_id = ANY (keys)
    ), k AS (
        SELECT user_id, other_user_id FROM t
        UNION SELECT user_id, other_user_id FROM m
        UNION SELECT user_id, other_user_id FROM conversation_base WHERE user_id = ANY (keys)
    )
    SELECT k.user_id, k.other_user_id,
           coalesce(t.message_count, 0) - coalesce(b.message_count, 0) - coalesce(d.messages, 0),
           coalesce(t.unread_count, 0) - coalesce(b.unread_count, 0) - coalesce(d.unread, 0)
    FROM k
    LEFT JOIN t ON t.user_id = k.user_id AND t.other_user_id = k.other_user_id
    LEFT JOIN m ON m.user_id = k.user_id AND m.other_user_id = k.other_user_id
    LEFT JOIN conversation_base b ON b.user_id = k.user_id AND b.other_user_id = k.other_user_id
    LEFT JOIN LATERAL (SELECT sum(x.messages) AS messages, sum(x.unread) AS unread FROM conversation_deltas x
                       WHERE x.user_id = k.user_id AND x.other_user_id = k.other_user_id) d ON true
    WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = k.user_id)
      AND EXISTS (SELECT 1 FROM users u WHERE u.id = k.other_user_id)
      AND ((t.last_message_id, t.last_message_at, t.last_message_preview, t.last_sender_id, t.message_count,
            t.unread_count)
           IS DISTINCT FROM
           (m.last_message_id, m.last_message_at, m.last_message_preview, m.last_sender_id, m.message_count,
            m.unread_count)
           OR coalesce(b.message_count, 0) + coalesce(d.messages, 0) <> coalesce(t.message_count, 0));
END $$;

-- name: conversations
-- GET /api/messages/conversations: the caller's conversations, latest first, each item concatenated
-- in the subquery's order (see the feed's query in mv_feed_projects.sql).
SELECT '{"items":[' || coalesce(string_agg(
           '{"other_user_id":' || c.other_user_id || ',"other_username":' || json_str(c.other_username)
           || ',"last_message_id":' || coalesce(c.last_message_id::text, 'null')
           || ',"last_message_at":' || json_ts(c.last_message_at)
           || ',"last_message_preview":' || json_str(c.last_message_preview)
           || ',"last_sender_id":' || coalesce(c.last_sender_id::text, 'null')
           || ',"message_count":' || c.message_count || ',"unread_count":' || c.unread_count || '}', ','), '')
       || ']}'
FROM (SELECT c.other_user_id, u.username AS other_username, c.last_message_id, c.last_message_at,
             c.last_message_preview, c.last_sender_id, c.message_count, c.unread_count
      FROM message_conversations_denorm c
      JOIN users u ON u.id = c.other_user_id
      WHERE c.user_id = %(user_id)s
      ORDER BY c.last_message_at DESC, c.other_user_id DESC
      LIMIT %(limit)s) c
