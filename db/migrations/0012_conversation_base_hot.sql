-- conversation_base's updates can be HOT (db/readmodels/message_conversations_denorm.sql): room on
-- each page, and no index on a count. The fold finds the rows it emptied by their keys. The room
-- comes to existing pages as they are rewritten; `VACUUM FULL conversation_base` (which locks the
-- table while it runs) gives it to all of them at once.

DROP INDEX conversation_base_empty_idx;
ALTER TABLE conversation_base SET (fillfactor = 90);

CREATE OR REPLACE FUNCTION conversations_fold(
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
