-- user_dashboard_stats and intro_request_stats: one row per user, exact at every commit.
--
-- Both are views over user_stats, a user's own counters kept by a delta ledger
-- (db/schema/ledgers.sql). The upvotes and comments a user's projects received are not stored:
-- they are the sums of the owned projects' counters (project_counters), so a project that changes
-- owner moves them with no write at all, and a hot project never touches its owner's row.

CREATE TABLE user_stats_base (
    user_id           bigint      PRIMARY KEY,
    project_count     bigint      NOT NULL DEFAULT 0,
    upvotes_given     bigint      NOT NULL DEFAULT 0,
    unread_messages   bigint      NOT NULL DEFAULT 0,
    chains_joined     bigint      NOT NULL DEFAULT 0,
    sent_pending      bigint      NOT NULL DEFAULT 0,
    sent_accepted     bigint      NOT NULL DEFAULT 0,
    sent_declined     bigint      NOT NULL DEFAULT 0,
    received_pending  bigint      NOT NULL DEFAULT 0,
    received_accepted bigint      NOT NULL DEFAULT 0,
    received_declined bigint      NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_stat_deltas (
    user_id           bigint      NOT NULL,
    project_count     bigint      NOT NULL DEFAULT 0,
    upvotes_given     bigint      NOT NULL DEFAULT 0,
    unread_messages   bigint      NOT NULL DEFAULT 0,
    chains_joined     bigint      NOT NULL DEFAULT 0,
    sent_pending      bigint      NOT NULL DEFAULT 0,
    sent_accepted     bigint      NOT NULL DEFAULT 0,
    sent_declined     bigint      NOT NULL DEFAULT 0,
    received_pending  bigint      NOT NULL DEFAULT 0,
    received_accepted bigint      NOT NULL DEFAULT 0,
    received_declined bigint      NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_stat_deltas_user_id_idx ON user_stat_deltas (user_id);
ALTER TABLE user_stat_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                  autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 5000);

-- The truths, from the source tables alone. Scalar subqueries and lateral joins, so that a filter on
-- user_id reaches the scan of users (the reconciler reads a key range at a time) and a reader of
-- some columns computes only those.
CREATE VIEW user_dashboard_stats_truth AS
SELECT u.id AS user_id,
       (SELECT count(*) FROM projects p WHERE p.owner_id = u.id) AS project_count,
       (SELECT count(*) FROM projects p JOIN project_upvotes v ON v.project_id = p.id
        WHERE p.owner_id = u.id) AS upvotes_received,
       (SELECT count(*) FROM projects p JOIN project_comments c ON c.project_id = p.id
        WHERE p.owner_id = u.id) AS comments_received,
       (SELECT count(*) FROM project_upvotes v WHERE v.user_id = u.id) AS upvotes_given,
       (SELECT count(*) FROM messages m WHERE m.recipient_id = u.id AND m.read_at IS NULL) AS unread_messages,
       (SELECT count(*) FROM intro_requests i WHERE i.target_id = u.id AND i.status = 'pending')
           AS pending_intros_received,
       (SELECT count(*) FROM chain_members m WHERE m.user_id = u.id) AS chains_joined
FROM users u;

CREATE VIEW intro_request_stats_truth AS
SELECT u.id AS user_id, s.sent_pending, s.sent_accepted, s.sent_declined,
       r.received_pending, r.received_accepted, r.received_declined
FROM users u
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE status = 'pending')  AS sent_pending,
           count(*) FILTER (WHERE status = 'accepted') AS sent_accepted,
           count(*) FILTER (WHERE status = 'declined') AS sent_declined
    FROM intro_requests WHERE requester_id = u.id) s
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE status = 'pending')  AS received_pending,
           count(*) FILTER (WHERE status = 'accepted') AS received_accepted,
           count(*) FILTER (WHERE status = 'declined') AS received_declined
    FROM intro_requests WHERE target_id = u.id) r;

-- The counters of one user: the base plus the pending deltas.
CREATE VIEW user_stats AS
SELECT b.user_id,
       b.project_count + coalesce(d.project_count, 0)         AS project_count,
       b.upvotes_given + coalesce(d.upvotes_given, 0)         AS upvotes_given,
       b.unread_messages + coalesce(d.unread_messages, 0)     AS unread_messages,
       b.chains_joined + coalesce(d.chains_joined, 0)         AS chains_joined,
       b.sent_pending + coalesce(d.sent_pending, 0)           AS sent_pending,
       b.sent_accepted + coalesce(d.sent_accepted, 0)         AS sent_accepted,
       b.sent_declined + coalesce(d.sent_declined, 0)         AS sent_declined,
       b.received_pending + coalesce(d.received_pending, 0)   AS received_pending,
       b.received_accepted + coalesce(d.received_accepted, 0) AS received_accepted,
       b.received_declined + coalesce(d.received_declined, 0) AS received_declined,
       greatest(b.updated_at, d.updated_at)                   AS updated_at
FROM user_stats_base b
LEFT JOIN LATERAL (
    SELECT sum(x.project_count)::bigint AS project_count, sum(x.upvotes_given)::bigint AS upvotes_given,
           sum(x.unread_messages)::bigint AS unread_messages, sum(x.chains_joined)::bigint AS chains_joined,
           sum(x.sent_pending)::bigint AS sent_pending, sum(x.sent_accepted)::bigint AS sent_accepted,
           sum(x.sent_declined)::bigint AS sent_declined, sum(x.received_pending)::bigint AS received_pending,
           sum(x.received_accepted)::bigint AS received_accepted, sum(x.received_declined)::bigint AS received_declined,
           max(x.created_at) AS updated_at
    FROM user_stat_deltas x WHERE x.user_id = b.user_id
) d ON true;

-- The read models, as the contract names them.
CREATE VIEW user_dashboard_stats AS
SELECT s.user_id,
       s.project_count,
       coalesce(r.upvotes_received, 0)  AS upvotes_received,
       coalesce(r.comments_received, 0) AS comments_received,
       s.upvotes_given,
       s.unread_messages,
       s.received_pending               AS pending_intros_received,
       s.chains_joined,
       greatest(s.updated_at, r.updated_at) AS updated_at
FROM user_stats s
LEFT JOIN LATERAL (
    SELECT sum(c.upvote_count)::bigint AS upvotes_received, sum(c.comment_count)::bigint AS comments_received,
           max(c.updated_at) AS updated_at
    FROM projects p JOIN project_counters c ON c.project_id = p.id
    WHERE p.owner_id = s.user_id
) r ON true;

CREATE VIEW intro_request_stats AS
SELECT user_id, sent_pending, sent_accepted, sent_declined,
       received_pending, received_accepted, received_declined, updated_at
FROM user_stats;

-- ---------------------------------------------------------------------------------------------
-- Maintenance: the triggers.

-- A user whose id appears only among the old rows is gone; only among the new, born. Both start
-- over: nothing of an earlier user with a reused id survives.
SELECT ledger_triggers('users', 'user_stats', $body$
    WITH ends AS (
        SELECT id FROM {changes} c GROUP BY id HAVING bool_and(sign < 0) OR bool_and(sign > 0)
    ), deltas_gone AS (
        DELETE FROM user_stat_deltas d USING ends e WHERE d.user_id = e.id
    )
    DELETE FROM user_stats_base b USING ends e WHERE b.user_id = e.id;
    INSERT INTO user_stats_base (user_id)
    SELECT id FROM {changes} c GROUP BY id HAVING bool_and(sign > 0);
    -- A zero delta for every user touched, gone ones included: the fold passes their ids on, so
    -- what is kept per user (the leaderboard, with the names) follows edits and deletes too.
    INSERT INTO user_stat_deltas (user_id) SELECT DISTINCT id FROM {changes} c;
$body$, rebuild => 'user_stats_rebuild');

-- An update that keeps the owner nets to zero and writes nothing.
SELECT ledger_triggers('projects', 'user_stats', $body$
    INSERT INTO user_stat_deltas (user_id, project_count)
    SELECT owner_id, sum(sign) FROM {changes} c GROUP BY owner_id HAVING sum(sign) <> 0;
$body$, rebuild => 'user_stats_rebuild');

SELECT ledger_triggers('project_upvotes', 'user_stats', $body$
    INSERT INTO user_stat_deltas (user_id, upvotes_given)
    SELECT user_id, sum(sign) FROM {changes} c GROUP BY user_id HAVING sum(sign) <> 0;
$body$, rebuild => 'user_stats_rebuild');

SELECT ledger_triggers('chain_members', 'user_stats', $body$
    INSERT INTO user_stat_deltas (user_id, chains_joined)
    SELECT user_id, sum(sign) FROM {changes} c GROUP BY user_id HAVING sum(sign) <> 0;
$body$, rebuild => 'user_stats_rebuild');

SELECT ledger_triggers('messages', 'user_stats', $body$
    INSERT INTO user_stat_deltas (user_id, unread_messages)
    SELECT recipient_id, sum(sign) FROM {changes} c WHERE read_at IS NULL
    GROUP BY recipient_id HAVING sum(sign) <> 0;
$body$, rebuild => 'user_stats_rebuild');

SELECT ledger_triggers('intro_requests', 'user_stats', $body$
    INSERT INTO user_stat_deltas (user_id, sent_pending, sent_accepted, sent_declined,
                                  received_pending, received_accepted, received_declined)
    SELECT * FROM (
        SELECT user_id,
               coalesce(sum(sign) FILTER (WHERE sent AND status = 'pending'), 0)      AS sp,
               coalesce(sum(sign) FILTER (WHERE sent AND status = 'accepted'), 0)     AS sa,
               coalesce(sum(sign) FILTER (WHERE sent AND status = 'declined'), 0)     AS sd,
               coalesce(sum(sign) FILTER (WHERE NOT sent AND status = 'pending'), 0)  AS rp,
               coalesce(sum(sign) FILTER (WHERE NOT sent AND status = 'accepted'), 0) AS ra,
               coalesce(sum(sign) FILTER (WHERE NOT sent AND status = 'declined'), 0) AS rd
        FROM (SELECT requester_id AS user_id, true AS sent, status, sign FROM {changes} c
              UNION ALL
              SELECT target_id, false, status, sign FROM {changes} c) s
        GROUP BY user_id
    ) t
    WHERE (sp, sa, sd, rp, ra, rd) <> (0, 0, 0, 0, 0, 0);
$body$, rebuild => 'user_stats_rebuild');

-- One pass over the source; see project_counters_rebuild().
CREATE FUNCTION user_stats_rebuild() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE user_stats_base, user_stat_deltas;
    INSERT INTO user_stats_base (user_id, project_count, upvotes_given, unread_messages, chains_joined,
                                 sent_pending, sent_accepted, sent_declined,
                                 received_pending, received_accepted, received_declined)
    SELECT d.user_id, d.project_count, d.upvotes_given, d.unread_messages, d.chains_joined,
           i.sent_pending, i.sent_accepted, i.sent_declined, i.received_pending, i.received_accepted,
           i.received_declined
    FROM user_dashboard_stats_truth d JOIN intro_request_stats_truth i ON i.user_id = d.user_id;
$$;

-- The fold's step; see project_counters_fold(). It touches the users whose own row may show it (a
-- statement on the user, a project that came or went; not a vote given or a message), and those it
-- found gone: the steps after it (the user leaderboard) follow those only.
CREATE FUNCTION user_stats_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    SELECT coalesce(array_agg(id), '{}') INTO ids FROM (
        SELECT u.id FROM users u
        WHERE u.id IN (SELECT DISTINCT user_id FROM user_stat_deltas ORDER BY user_id LIMIT max_keys)
        ORDER BY u.id FOR KEY SHARE SKIP LOCKED) s;
    WITH moved AS (
        DELETE FROM user_stat_deltas d USING unnest(ids) k(id) WHERE d.user_id = k.id
        RETURNING d.*
    ), agg AS (
        SELECT user_id, sum(project_count) AS project_count, sum(upvotes_given) AS upvotes_given,
               sum(unread_messages) AS unread_messages, sum(chains_joined) AS chains_joined,
               sum(sent_pending) AS sent_pending, sum(sent_accepted) AS sent_accepted,
               sum(sent_declined) AS sent_declined, sum(received_pending) AS received_pending,
               sum(received_accepted) AS received_accepted, sum(received_declined) AS received_declined,
               max(created_at) AS t, count(*) AS n,
               -- A statement on the user (its zero delta) or a project that came or went.
               bool_or(project_count <> 0
                       OR (upvotes_given, unread_messages, chains_joined, sent_pending, sent_accepted,
                           sent_declined, received_pending, received_accepted, received_declined)
                          = (0, 0, 0, 0, 0, 0, 0, 0, 0)) AS own_row
        FROM moved GROUP BY user_id
    ), upd AS (
        UPDATE user_stats_base b SET
            project_count = b.project_count + a.project_count,
            upvotes_given = b.upvotes_given + a.upvotes_given,
            unread_messages = b.unread_messages + a.unread_messages,
            chains_joined = b.chains_joined + a.chains_joined,
            sent_pending = b.sent_pending + a.sent_pending,
            sent_accepted = b.sent_accepted + a.sent_accepted,
            sent_declined = b.sent_declined + a.sent_declined,
            received_pending = b.received_pending + a.received_pending,
            received_accepted = b.received_accepted + a.received_accepted,
            received_declined = b.received_declined + a.received_declined,
            updated_at = greatest(b.updated_at, a.t)
        FROM agg a WHERE b.user_id = a.user_id
    )
    SELECT count(*), coalesce(sum(n), 0), coalesce(array_agg(user_id) FILTER (WHERE own_row), '{}')
    INTO keys_folded, deltas_folded, touched_users FROM agg;
    -- Deltas of users deleted for good (a cascade can write them after the user's own cleanup).
    WITH gone AS (
        DELETE FROM user_stat_deltas WHERE ctid IN (
            SELECT d.ctid FROM user_stat_deltas d
            WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = d.user_id)
            FOR UPDATE SKIP LOCKED)
        RETURNING user_id
    )
    SELECT touched_users || coalesce(array_agg(DISTINCT user_id), '{}') INTO touched_users FROM gone;
    RETURN NEXT;
END $$;

-- The reconciler's repair of these users, for both read models: a correction appended to the
-- ledger (see project_counters_repair()). The received counts are sums of project counters,
-- repaired there.
CREATE FUNCTION user_stats_repair(keys bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_stats_base (user_id)
    SELECT id FROM users WHERE id = ANY (keys)
    ON CONFLICT (user_id) DO NOTHING;
    WITH gone AS (
        DELETE FROM user_stats_base b
        WHERE b.user_id = ANY (keys) AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = b.user_id)
        RETURNING b.user_id
    )
    DELETE FROM user_stat_deltas d USING gone WHERE d.user_id = gone.user_id;
    INSERT INTO user_stat_deltas (user_id, project_count, upvotes_given, unread_messages, chains_joined,
                                  sent_pending, sent_accepted, sent_declined,
                                  received_pending, received_accepted, received_declined)
    SELECT m.user_id, d.project_count - m.project_count, d.upvotes_given - m.upvotes_given,
           d.unread_messages - m.unread_messages, d.chains_joined - m.chains_joined,
           i.sent_pending - m.sent_pending, i.sent_accepted - m.sent_accepted, i.sent_declined - m.sent_declined,
           i.received_pending - m.received_pending, i.received_accepted - m.received_accepted,
           i.received_declined - m.received_declined
    FROM user_stats m
    JOIN user_dashboard_stats_truth d ON d.user_id = m.user_id
    JOIN intro_request_stats_truth i ON i.user_id = m.user_id
    WHERE m.user_id = ANY (keys) AND d.user_id = ANY (keys) AND i.user_id = ANY (keys)
      AND (d.project_count, d.upvotes_given, d.unread_messages, d.chains_joined, i.sent_pending, i.sent_accepted,
           i.sent_declined, i.received_pending, i.received_accepted, i.received_declined)
          IS DISTINCT FROM
          (m.project_count, m.upvotes_given, m.unread_messages, m.chains_joined, m.sent_pending, m.sent_accepted,
           m.sent_declined, m.received_pending, m.received_accepted, m.received_declined);
END $$;

-- name: dashboard
-- GET /api/users/dashboard. user_dashboard_stats and intro_request_stats are both views over
-- user_stats; joining the two would read it twice, so the route reads user_stats once and adds
-- the received counts as user_dashboard_stats defines them (the owned projects' exact counters).
SELECT '{"user_id":' || s.user_id || ',"project_count":' || s.project_count
       || ',"upvotes_received":' || coalesce(r.upvotes, 0) || ',"comments_received":' || coalesce(r.comments, 0)
       || ',"upvotes_given":' || s.upvotes_given || ',"unread_messages":' || s.unread_messages
       || ',"pending_intros_received":' || s.received_pending || ',"chains_joined":' || s.chains_joined
       || ',"updated_at":' || json_ts(greatest(s.updated_at, r.updated_at))
       || ',"intro_stats":{"sent_pending":' || s.sent_pending || ',"sent_accepted":' || s.sent_accepted
       || ',"sent_declined":' || s.sent_declined || ',"received_pending":' || s.received_pending
       || ',"received_accepted":' || s.received_accepted || ',"received_declined":' || s.received_declined || '}}'
FROM user_stats s
LEFT JOIN LATERAL (
    SELECT sum(c.upvote_count)::bigint AS upvotes, sum(c.comment_count)::bigint AS comments,
           max(c.updated_at) AS updated_at
    FROM projects p
    JOIN project_counters c ON c.project_id = p.id
    WHERE p.owner_id = s.user_id) r ON true
WHERE s.user_id = %(user_id)s
