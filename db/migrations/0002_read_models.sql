-- Phase 1: zero-staleness read models.
--
-- Design (docs/read-models.md): every read model is a *base* table plus an append-only *delta
-- ledger*. Statement-level triggers with transition tables turn each source statement into a few
-- aggregated delta rows (one per touched key), so writers never update, and never lock, a shared
-- counter row: a viral project or a much-messaged user costs the same as any other. The contract's
-- names are views that add the pending deltas to the base, so every read is exact at every commit.
-- fold_read_model_deltas() (run by the refresher) moves deltas into the base tables; it never waits
-- for a lock, so it cannot deadlock with writers.

-- ---------------------------------------------------------------------------------------------
-- Base tables and ledgers. No foreign keys: a key share lock per delta on a hot parent row is the
-- very serialization this design avoids; triggers clean up after deletes instead.

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

CREATE TABLE project_counters_base (
    project_id    bigint      PRIMARY KEY,
    upvote_count  bigint      NOT NULL DEFAULT 0,
    comment_count bigint      NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE project_counter_deltas (
    project_id bigint      NOT NULL,
    upvotes    bigint      NOT NULL DEFAULT 0,
    comments   bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX project_counter_deltas_project_id_idx ON project_counter_deltas (project_id);

-- One row per direction of a conversation; both directions always change together.
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
);
CREATE INDEX conversation_base_empty_idx ON conversation_base (user_id) WHERE message_count <= 0;

-- A delta row also marks its pair "dirty": until it is folded, the view finds the pair's latest
-- message live (an index probe) instead of trusting the base row's copy.
CREATE TABLE conversation_deltas (
    user_id       bigint      NOT NULL,
    other_user_id bigint      NOT NULL,
    messages      bigint      NOT NULL DEFAULT 0,
    unread        bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversation_deltas_pair_idx ON conversation_deltas (user_id, other_user_id);

-- Ledgers churn (insert, then delete at the next fold): vacuum them by row count, not by fraction.
ALTER TABLE user_stat_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                  autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 5000);
ALTER TABLE project_counter_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                  autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 5000);
ALTER TABLE conversation_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                  autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 5000);

-- ---------------------------------------------------------------------------------------------
-- The truth: each read model's definition, computed from the source tables alone. The backfill,
-- the reconciler and the tests all compare against (or copy from) these views.

CREATE VIEW user_stats_truth AS
SELECT u.id AS user_id,
       coalesce(p.n, 0)          AS project_count,
       coalesce(g.n, 0)          AS upvotes_given,
       coalesce(m.n, 0)          AS unread_messages,
       coalesce(cm.n, 0)         AS chains_joined,
       coalesce(s.pending, 0)    AS sent_pending,
       coalesce(s.accepted, 0)   AS sent_accepted,
       coalesce(s.declined, 0)   AS sent_declined,
       coalesce(r.pending, 0)    AS received_pending,
       coalesce(r.accepted, 0)   AS received_accepted,
       coalesce(r.declined, 0)   AS received_declined
FROM users u
LEFT JOIN (SELECT owner_id, count(*) AS n FROM projects GROUP BY owner_id) p ON p.owner_id = u.id
LEFT JOIN (SELECT user_id, count(*) AS n FROM project_upvotes GROUP BY user_id) g ON g.user_id = u.id
LEFT JOIN (SELECT recipient_id, count(*) AS n FROM messages WHERE read_at IS NULL GROUP BY recipient_id) m
       ON m.recipient_id = u.id
LEFT JOIN (SELECT user_id, count(*) AS n FROM chain_members GROUP BY user_id) cm ON cm.user_id = u.id
LEFT JOIN (SELECT requester_id,
                  count(*) FILTER (WHERE status = 'pending')  AS pending,
                  count(*) FILTER (WHERE status = 'accepted') AS accepted,
                  count(*) FILTER (WHERE status = 'declined') AS declined
           FROM intro_requests GROUP BY requester_id) s ON s.requester_id = u.id
LEFT JOIN (SELECT target_id,
                  count(*) FILTER (WHERE status = 'pending')  AS pending,
                  count(*) FILTER (WHERE status = 'accepted') AS accepted,
                  count(*) FILTER (WHERE status = 'declined') AS declined
           FROM intro_requests GROUP BY target_id) r ON r.target_id = u.id;

CREATE VIEW project_counters_truth AS
SELECT p.id AS project_id, coalesce(v.n, 0) AS upvote_count, coalesce(c.n, 0) AS comment_count
FROM projects p
LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v ON v.project_id = p.id
LEFT JOIN (SELECT project_id, count(*) AS n FROM project_comments GROUP BY project_id) c ON c.project_id = p.id;

CREATE VIEW user_dashboard_stats_truth AS
SELECT s.user_id,
       s.project_count,
       coalesce(ur.n, 0) AS upvotes_received,
       coalesce(cr.n, 0) AS comments_received,
       s.upvotes_given,
       s.unread_messages,
       s.received_pending AS pending_intros_received,
       s.chains_joined
FROM user_stats_truth s
LEFT JOIN (SELECT p.owner_id, count(*) AS n FROM project_upvotes v JOIN projects p ON p.id = v.project_id
           GROUP BY p.owner_id) ur ON ur.owner_id = s.user_id
LEFT JOIN (SELECT p.owner_id, count(*) AS n FROM project_comments c JOIN projects p ON p.id = c.project_id
           GROUP BY p.owner_id) cr ON cr.owner_id = s.user_id;

CREATE VIEW intro_request_stats_truth AS
SELECT user_id, sent_pending, sent_accepted, sent_declined, received_pending, received_accepted, received_declined
FROM user_stats_truth;

-- The latest message of a pair is the one with the greatest (created_at, id).
CREATE VIEW message_conversations_truth AS
WITH sides AS (
    SELECT sender_id AS user_id, recipient_id AS other_user_id, id, created_at, body, sender_id,
           false AS unread
    FROM messages
    UNION ALL
    SELECT recipient_id, sender_id, id, created_at, body, sender_id, read_at IS NULL
    FROM messages
), counts AS (
    SELECT user_id, other_user_id, count(*) AS message_count, count(*) FILTER (WHERE unread) AS unread_count
    FROM sides GROUP BY user_id, other_user_id
), latest AS (
    SELECT DISTINCT ON (user_id, other_user_id) user_id, other_user_id, id, created_at, body, sender_id
    FROM sides ORDER BY user_id, other_user_id, created_at DESC, id DESC
)
SELECT c.user_id, c.other_user_id,
       l.id AS last_message_id, l.created_at AS last_message_at, left(l.body, 120) AS last_message_preview,
       l.sender_id AS last_sender_id, c.message_count, c.unread_count
FROM counts c JOIN latest l USING (user_id, other_user_id);

-- ---------------------------------------------------------------------------------------------
-- The read models, as the contract names them: base plus pending deltas.

CREATE VIEW project_counters AS
SELECT b.project_id,
       b.upvote_count + coalesce(d.upvotes, 0)   AS upvote_count,
       b.comment_count + coalesce(d.comments, 0) AS comment_count,
       greatest(b.updated_at, d.updated_at)      AS updated_at
FROM project_counters_base b
LEFT JOIN LATERAL (
    SELECT sum(x.upvotes)::bigint AS upvotes, sum(x.comments)::bigint AS comments, max(x.created_at) AS updated_at
    FROM project_counter_deltas x WHERE x.project_id = b.project_id
) d ON true;

-- The counters of one user: base plus deltas (the dashboard and intro stats read from it).
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

-- Received upvotes and comments are the sums of the owned projects' counters: a project that
-- changes owner moves them with no write at all, and a hot project never touches its owner's row.
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

-- The latest message between two users, either way round: two probes of messages_pair_idx. One
-- SQL SELECT, so the planner inlines it into the view and the fold that call it.
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
-- Triggers. Each source table has one statement body below, written against {changes}: the rows
-- of the statement, each with a sign (-1 for an old row, +1 for a new one). rm_install_triggers
-- turns a body into three statement-level trigger functions (INSERT, DELETE, UPDATE), each reading
-- its transition tables directly, so a body is written once and a statement costs a few aggregated
-- inserts however many rows it touched.

-- Everything kept for these users, in both directions of their conversations: used when a user
-- goes, and when a user id comes (back), so nothing of an earlier holder of the id survives.
CREATE FUNCTION rm_forget_users(ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    WITH gone AS (
        SELECT unnest(ids) AS id
    ), mine AS (
        SELECT user_id, other_user_id FROM conversation_base WHERE user_id IN (SELECT id FROM gone)
        UNION
        SELECT user_id, other_user_id FROM conversation_deltas WHERE user_id IN (SELECT id FROM gone)
    ), pairs AS (
        SELECT user_id, other_user_id FROM mine UNION SELECT other_user_id, user_id FROM mine
    ), base_gone AS (
        DELETE FROM conversation_base b USING pairs p
        WHERE b.user_id = p.user_id AND b.other_user_id = p.other_user_id
    ), deltas_gone AS (
        DELETE FROM conversation_deltas d USING pairs p
        WHERE d.user_id = p.user_id AND d.other_user_id = p.other_user_id
    ), stats_gone AS (
        DELETE FROM user_stat_deltas d USING gone g WHERE d.user_id = g.id
    )
    DELETE FROM user_stats_base b USING gone g WHERE b.user_id = g.id;
$$;

CREATE FUNCTION rm_forget_projects(ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    WITH gone AS (
        SELECT unnest(ids) AS id
    ), deltas_gone AS (
        DELETE FROM project_counter_deltas d USING gone g WHERE d.project_id = g.id
    )
    DELETE FROM project_counters_base b USING gone g WHERE b.project_id = g.id;
$$;

CREATE FUNCTION rm_install_triggers(source regclass, body text) RETURNS void
LANGUAGE plpgsql AS $install$
DECLARE
    t text := source::text;
    event text;
    src text;
    guard text;
BEGIN
    FOREACH event IN ARRAY ARRAY['insert', 'delete', 'update'] LOOP
        IF event = 'insert' THEN
            src := '(SELECT 1 AS sign, n.* FROM new_rows n)';
            guard := 'IF NOT EXISTS (SELECT FROM new_rows) THEN RETURN NULL; END IF;';
        ELSIF event = 'delete' THEN
            src := '(SELECT -1 AS sign, o.* FROM old_rows o)';
            guard := 'IF NOT EXISTS (SELECT FROM old_rows) THEN RETURN NULL; END IF;';
        ELSE
            src := '(SELECT -1 AS sign, o.* FROM old_rows o UNION ALL SELECT 1 AS sign, n.* FROM new_rows n)';
            guard := '';
        END IF;
        EXECUTE format($f$
            CREATE FUNCTION %1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
            BEGIN
                %2$s
                %3$s
                RETURN NULL;
            END $body$ $f$, format('rm_%s_%s', t, event), guard, replace(body, '{changes}', src));
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s FOR EACH STATEMENT EXECUTE FUNCTION %I()',
                       format('trg_%s_%s', t, event), upper(event), source,
                       CASE event WHEN 'insert' THEN 'NEW TABLE AS new_rows'
                                  WHEN 'delete' THEN 'OLD TABLE AS old_rows'
                                  ELSE 'OLD TABLE AS old_rows NEW TABLE AS new_rows' END,
                       format('rm_%s_%s', t, event));
    END LOOP;
    -- TRUNCATE fires no row or statement triggers of the other kinds: rebuild from what is left.
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION rm_source_truncated()',
                   format('trg_%s_truncate', t), source);
END $install$;

-- Called by the fold with the ids of the projects it folded (and of those it found gone). A no-op
-- here; migration 0003 makes it keep the feed.
CREATE FUNCTION rm_projects_folded(ids bigint[]) RETURNS void
LANGUAGE sql AS $$ SELECT $$;

CREATE FUNCTION rebuild_read_models() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- Set-based and linear: one pass over each source table. TRUNCATE takes the ledgers' locks, so
    -- a writer caught in the middle adds its deltas after this commits, on top of a truth it is not in.
    TRUNCATE user_stats_base, user_stat_deltas, project_counters_base, project_counter_deltas,
             conversation_base, conversation_deltas;
    INSERT INTO user_stats_base (user_id, project_count, upvotes_given, unread_messages, chains_joined,
                                 sent_pending, sent_accepted, sent_declined,
                                 received_pending, received_accepted, received_declined)
    SELECT user_id, project_count, upvotes_given, unread_messages, chains_joined,
           sent_pending, sent_accepted, sent_declined, received_pending, received_accepted, received_declined
    FROM user_stats_truth;
    INSERT INTO project_counters_base (project_id, upvote_count, comment_count)
    SELECT project_id, upvote_count, comment_count FROM project_counters_truth;
    INSERT INTO conversation_base (user_id, other_user_id, last_message_id, last_message_at,
                                   last_message_preview, last_sender_id, message_count, unread_count)
    SELECT user_id, other_user_id, last_message_id, last_message_at, last_message_preview, last_sender_id,
           message_count, unread_count
    FROM message_conversations_truth;
END $$;

CREATE FUNCTION rm_source_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM rebuild_read_models();
    RETURN NULL;
END $$;

-- A user or project whose id appears only among the old rows is gone; only among the new, born.
SELECT rm_install_triggers('users', $body$
    PERFORM rm_forget_users(ARRAY(
        SELECT id FROM {changes} c GROUP BY id HAVING bool_and(sign < 0) OR bool_and(sign > 0)));
    INSERT INTO user_stats_base (user_id)
    SELECT id FROM {changes} c GROUP BY id HAVING bool_and(sign > 0);
$body$);

SELECT rm_install_triggers('projects', $body$
    PERFORM rm_forget_projects(ARRAY(
        SELECT id FROM {changes} c GROUP BY id HAVING bool_and(sign < 0) OR bool_and(sign > 0)));
    INSERT INTO project_counters_base (project_id)
    SELECT id FROM {changes} c GROUP BY id HAVING bool_and(sign > 0);
    -- A zero delta for every project touched, gone ones included: the fold passes their ids to
    -- rm_projects_folded, so what is kept per project (the feed) follows edits and deletes too.
    INSERT INTO project_counter_deltas (project_id) SELECT DISTINCT id FROM {changes} c;
    -- An update that keeps the owner nets to zero and writes nothing.
    INSERT INTO user_stat_deltas (user_id, project_count)
    SELECT owner_id, sum(sign) FROM {changes} c GROUP BY owner_id HAVING sum(sign) <> 0;
$body$);

SELECT rm_install_triggers('project_upvotes', $body$
    INSERT INTO project_counter_deltas (project_id, upvotes)
    SELECT project_id, sum(sign) FROM {changes} c GROUP BY project_id HAVING sum(sign) <> 0;
    INSERT INTO user_stat_deltas (user_id, upvotes_given)
    SELECT user_id, sum(sign) FROM {changes} c GROUP BY user_id HAVING sum(sign) <> 0;
$body$);

SELECT rm_install_triggers('project_comments', $body$
    INSERT INTO project_counter_deltas (project_id, comments)
    SELECT project_id, sum(sign) FROM {changes} c GROUP BY project_id HAVING sum(sign) <> 0;
$body$);

SELECT rm_install_triggers('chain_members', $body$
    INSERT INTO user_stat_deltas (user_id, chains_joined)
    SELECT user_id, sum(sign) FROM {changes} c GROUP BY user_id HAVING sum(sign) <> 0;
$body$);

-- Both directions of every touched pair. Rows are kept even when they net to zero: an edited body
-- or timestamp may change which message is the latest, and the row marks the pair dirty.
SELECT rm_install_triggers('messages', $body$
    INSERT INTO conversation_deltas (user_id, other_user_id, messages, unread)
    SELECT user_id, other_user_id, sum(sign), sum(sign * unread)
    FROM (SELECT sender_id AS user_id, recipient_id AS other_user_id, sign, 0 AS unread FROM {changes} c
          UNION ALL
          SELECT recipient_id, sender_id, sign, (read_at IS NULL)::int FROM {changes} c) s
    GROUP BY user_id, other_user_id;
    INSERT INTO user_stat_deltas (user_id, unread_messages)
    SELECT recipient_id, sum(sign) FROM {changes} c WHERE read_at IS NULL
    GROUP BY recipient_id HAVING sum(sign) <> 0;
$body$);

SELECT rm_install_triggers('intro_requests', $body$
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
$body$);

DROP FUNCTION rm_install_triggers(regclass, text);

-- ---------------------------------------------------------------------------------------------
-- The fold: move pending deltas into the base tables, at most max_keys keys per model per call.
--
-- It locks the parent rows (users, projects) FOR KEY SHARE SKIP LOCKED and folds only the keys it
-- locked: a key whose user or project is being deleted is left for the next call. It never waits
-- for a row lock, so it cannot deadlock with a writer; a deleter that meets its lock waits for one
-- short transaction. Each model's move is one statement, so readers see the deltas either still
-- pending or already in the base, never both or neither.

CREATE FUNCTION fold_read_model_deltas(max_keys integer DEFAULT 20000)
RETURNS TABLE (model text, keys_folded bigint, deltas_folded bigint)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    touched bigint[];
    ca bigint[];
    cb bigint[];
BEGIN
    -- One folder at a time; a second caller returns at once with nothing.
    IF NOT pg_try_advisory_xact_lock(7305798357383151617) THEN
        RETURN;
    END IF;
    -- Row locks are never waited for (SKIP LOCKED); a table lock (a TRUNCATE rebuilding the read
    -- models) is waited for briefly, then the fold gives up and the next call tries again.
    SET LOCAL lock_timeout = '2s';

    -- project counters
    SELECT coalesce(array_agg(id), '{}') INTO ids FROM (
        SELECT p.id FROM projects p
        -- DISTINCT in index order with a LIMIT stops early: a huge backlog is not read whole per call.
        WHERE p.id IN (SELECT DISTINCT project_id FROM project_counter_deltas ORDER BY project_id LIMIT max_keys)
        ORDER BY p.id FOR KEY SHARE SKIP LOCKED) s;
    WITH moved AS (
        DELETE FROM project_counter_deltas d USING unnest(ids) k(id) WHERE d.project_id = k.id
        RETURNING d.project_id, d.upvotes, d.comments, d.created_at
    ), agg AS (
        SELECT project_id, sum(upvotes) AS u, sum(comments) AS c, max(created_at) AS t, count(*) AS n
        FROM moved GROUP BY project_id
    ), upd AS (
        UPDATE project_counters_base b
        SET upvote_count = b.upvote_count + a.u, comment_count = b.comment_count + a.c,
            updated_at = greatest(b.updated_at, a.t)
        FROM agg a WHERE b.project_id = a.project_id
    )
    SELECT 'project_counters', count(*), coalesce(sum(n), 0), coalesce(array_agg(project_id), '{}')
    INTO model, keys_folded, deltas_folded, touched FROM agg;
    RETURN NEXT;
    -- Deltas of projects deleted for good (a cascade can write them after the project's own cleanup).
    WITH gone AS (
        DELETE FROM project_counter_deltas WHERE ctid IN (
            SELECT d.ctid FROM project_counter_deltas d
            WHERE NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = d.project_id)
            FOR UPDATE SKIP LOCKED)
        RETURNING project_id
    )
    SELECT touched || coalesce(array_agg(DISTINCT project_id), '{}') INTO touched FROM gone;
    PERFORM rm_projects_folded(touched);

    -- user stats
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
               max(created_at) AS t, count(*) AS n
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
    SELECT 'user_stats', count(*), coalesce(sum(n), 0) INTO model, keys_folded, deltas_folded FROM agg;
    RETURN NEXT;
    DELETE FROM user_stat_deltas WHERE ctid IN (
        SELECT d.ctid FROM user_stat_deltas d
        WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = d.user_id)
        FOR UPDATE SKIP LOCKED);

    -- conversations: both directions of a pair fold together, and only when both users are locked.
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
    SELECT 'conversations', count(*), coalesce(sum(n), 0) INTO model, keys_folded, deltas_folded FROM agg;
    RETURN NEXT;
    DELETE FROM conversation_base WHERE ctid IN (
        SELECT ctid FROM conversation_base WHERE message_count <= 0 FOR UPDATE SKIP LOCKED);
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
END $$;

-- Backfill: build every read model from the data already here.
SELECT rebuild_read_models();
