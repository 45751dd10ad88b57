-- The chain directory, the forum thread lists, the user leaderboard, the search documents and the
-- typo vocabulary become tables the fold keeps, in proportion to the change (issue 14): each was a
-- materialized view refreshed whole, at a cost that grew with the data. Their new definitions are
-- those of db/readmodels/ as of this migration; the tables are filled by their rebuild functions.
-- The fold's steps take and return the projects, users and chains they touched
-- (db/schema/ledgers.sql).

-- ---------------------------------------------------------------------------------------------
-- The five materialized views go, with their refresh queue rows and the request triggers that only
-- they used (mv_leaderboard_projects, the one view left, is requested by the feed's fold).

DELETE FROM mv_refresh_queue WHERE view_name IN ('mv_chain_directory', 'mv_forum_threads', 'mv_leaderboard_users',
                                                 'mv_search_documents', 'mv_search_words');
DROP TRIGGER trg_users_mv_request ON users;
DROP TRIGGER trg_projects_mv_request ON projects;
DROP TRIGGER trg_chains_mv_request ON chains;
DROP TRIGGER trg_chain_projects_mv_request ON chain_projects;
DROP TRIGGER trg_chain_members_mv_request ON chain_members;
DROP TRIGGER trg_forum_threads_mv_request ON forum_threads;
DROP TRIGGER trg_forum_posts_mv_request ON forum_posts;

DROP FUNCTION search_candidates(tsquery, text);
DROP FUNCTION search_type_matches(tsquery, text);
DROP FUNCTION search_type_walk(tsquery, text);
DROP MATERIALIZED VIEW mv_search_words;
DROP VIEW mv_search_words_truth;
DROP FUNCTION search_vocabulary(boolean);
DROP MATERIALIZED VIEW mv_search_documents;
DROP VIEW mv_search_documents_truth;
DROP MATERIALIZED VIEW mv_leaderboard_users;
DROP VIEW mv_leaderboard_users_truth;
DROP FUNCTION leaderboard_users_ranked(boolean);
DROP FUNCTION leaderboard_user_item(bigint, bigint, text, text, bigint, bigint);
DROP MATERIALIZED VIEW mv_forum_threads;
DROP VIEW mv_forum_threads_truth;
DROP MATERIALIZED VIEW mv_chain_directory;
DROP VIEW mv_chain_directory_truth;

-- ---------------------------------------------------------------------------------------------
-- The fold's steps, in their new form.

DROP FUNCTION project_counters_fold(integer);
DROP FUNCTION user_stats_fold(integer);
DROP FUNCTION conversations_fold(integer);

-- The fold's step (db/schema/ledgers.sql): move the deltas of at most max_keys projects into the
-- base. It locks the projects FOR KEY SHARE SKIP LOCKED and folds only the keys it locked: a
-- project being deleted is left for the next fold. The move is one statement, so readers see a
-- delta either still pending or already in the base, never both or neither. It touches the
-- projects it folded, and those it found gone, for the fold-kept read models.
CREATE FUNCTION project_counters_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
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
    SELECT count(*), coalesce(sum(n), 0), coalesce(array_agg(project_id), '{}')
    INTO keys_folded, deltas_folded, touched_projects FROM agg;
    -- Deltas of projects deleted for good (a cascade can write them after the project's own cleanup).
    WITH gone AS (
        DELETE FROM project_counter_deltas WHERE ctid IN (
            SELECT d.ctid FROM project_counter_deltas d
            WHERE NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = d.project_id)
            FOR UPDATE SKIP LOCKED)
        RETURNING project_id
    )
    SELECT touched_projects || coalesce(array_agg(DISTINCT project_id), '{}') INTO touched_projects FROM gone;
    RETURN NEXT;
END $$;

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
    RETURN NEXT;
END $$;

-- The projects whose rows wait for the next fold (the reconciler leaves them out).
CREATE VIEW mv_feed_projects_pending AS SELECT DISTINCT project_id AS id FROM project_counter_deltas;

-- The fold's step (db/schema/ledgers.sql): the projects the counters' step touched.
CREATE FUNCTION feed_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM feed_apply(moved_projects);
    keys_folded := cardinality(moved_projects);
    deltas_folded := 0;
    RETURN NEXT;
END $$;

-- The projects whose rows wait for the next fold (the reconciler leaves them out).
CREATE VIEW mv_chain_projects_pending AS SELECT DISTINCT project_id FROM project_counter_deltas;

-- The fold's step (db/schema/ledgers.sql): the projects the counters' step touched, after the feed's.
CREATE FUNCTION chain_projects_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM chain_projects_apply(moved_projects);
    keys_folded := cardinality(moved_projects);
    deltas_folded := 0;
    RETURN NEXT;
END $$;

-- A user's statement writes a zero delta for every user it touched, so that the fold passes them on.
UPDATE ledger_trigger_bodies SET body = $body$
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
$body$
WHERE source = 'users' AND model = 'user_stats';

-- =============================================================================================
-- db/readmodels/mv_chain_directory.sql
-- =============================================================================================

-- mv_chain_directory: one row per chain with its counts and last activity; as of the fold.
--
-- A table the fold keeps from a ledger of its own (db/schema/ledgers.sql): a statement on a chain's
-- projects, members or threads appends one delta row per chain it touched, and the fold adds the
-- deltas to the chain's counts and finds its last activity again (three index probes). So a join
-- costs a delta row, and the fold's work follows the chains that changed, whatever the number of
-- chains or members. (It was a materialized view, refreshed whole: 0.1 s at `standard`, 0.5 s at
-- 4x, and growing.)

CREATE TABLE chain_stat_deltas (
    chain_id   bigint      NOT NULL,
    projects   bigint      NOT NULL DEFAULT 0,
    members    bigint      NOT NULL DEFAULT 0,
    threads    bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chain_stat_deltas_chain_id_idx ON chain_stat_deltas (chain_id);
ALTER TABLE chain_stat_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                   autovacuum_vacuum_insert_scale_factor = 0,
                                   autovacuum_vacuum_insert_threshold = 5000);

-- A chain's last activity, three index probes (its own creation counts too).
CREATE INDEX chain_projects_chain_added_idx ON chain_projects (chain_id, added_at);
CREATE INDEX chain_members_chain_joined_idx ON chain_members (chain_id, joined_at);

CREATE FUNCTION chain_last_activity(chain bigint, created_at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
RETURN greatest(created_at,
                (SELECT max(x.added_at) FROM chain_projects x WHERE x.chain_id = chain),
                (SELECT max(x.joined_at) FROM chain_members x WHERE x.chain_id = chain),
                (SELECT max(x.created_at) FROM forum_threads x WHERE x.chain_id = chain));

-- A directory item's JSON; effectively immutable, like feed_item_head() (mv_feed_projects.sql).
CREATE FUNCTION chain_directory_item(chain_id bigint, slug text, name text, description text, owner_username text,
                                     project_count bigint, member_count bigint, thread_count bigint,
                                     last_activity_at timestamptz) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN '{"chain_id":' || chain_id || ',"slug":' || json_str(slug) || ',"name":' || json_str(name)
        || ',"description":' || json_str(description) || ',"owner_username":' || json_str(owner_username)
        || ',"project_count":' || project_count || ',"member_count":' || member_count
        || ',"thread_count":' || thread_count || ',"last_activity_at":' || json_ts(last_activity_at) || '}';
END $$;

CREATE TABLE mv_chain_directory (
    chain_id         bigint      PRIMARY KEY,
    slug             text        NOT NULL,
    name             text        NOT NULL,
    description      text        NOT NULL,
    owner_id         bigint      NOT NULL,
    owner_username   text        NOT NULL,
    project_count    bigint      NOT NULL,
    member_count     bigint      NOT NULL,
    thread_count     bigint      NOT NULL,
    last_activity_at timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    item             text        NOT NULL GENERATED ALWAYS AS (
        chain_directory_item(chain_id, slug, name, description, owner_username, project_count, member_count,
                             thread_count, last_activity_at)) STORED
);
-- Not unique: two chains that swap slugs in one statement would collide within the fold's upsert.
CREATE INDEX mv_chain_directory_slug_idx ON mv_chain_directory (slug);
CREATE INDEX mv_chain_directory_members_idx ON mv_chain_directory (member_count DESC, chain_id DESC);

-- The truth, from the source tables alone. Scalar subqueries, so that a filter on chain_id reaches
-- the scan of chains.
CREATE VIEW mv_chain_directory_truth AS
SELECT d.*, chain_directory_item(d.chain_id, d.slug, d.name, d.description, d.owner_username, d.project_count,
                                 d.member_count, d.thread_count, d.last_activity_at) AS item
FROM (
    SELECT c.id AS chain_id, c.slug, c.name, c.description, c.owner_id, u.username AS owner_username,
           (SELECT count(*) FROM chain_projects x WHERE x.chain_id = c.id) AS project_count,
           (SELECT count(*) FROM chain_members x WHERE x.chain_id = c.id) AS member_count,
           (SELECT count(*) FROM forum_threads x WHERE x.chain_id = c.id) AS thread_count,
           chain_last_activity(c.id, c.created_at) AS last_activity_at, c.created_at
    FROM chains c
    JOIN users u ON u.id = c.owner_id
) d;

-- The chains whose rows wait for the next fold (the reconciler leaves them out).
CREATE VIEW mv_chain_directory_pending AS SELECT DISTINCT chain_id FROM chain_stat_deltas;

-- ---------------------------------------------------------------------------------------------
-- Maintenance.

-- Rows are kept even when they net to zero: a changed time may change the chain's last activity,
-- and a zero row brings the chain's name, description or owner along.
SELECT ledger_triggers('chains', 'mv_chain_directory', $body$
    INSERT INTO chain_stat_deltas (chain_id) SELECT DISTINCT id FROM {changes} c;
$body$, rebuild => 'chain_directory_rebuild');

SELECT ledger_triggers('chain_projects', 'mv_chain_directory', $body$
    INSERT INTO chain_stat_deltas (chain_id, projects) SELECT chain_id, sum(sign) FROM {changes} c GROUP BY chain_id;
$body$, rebuild => 'chain_directory_rebuild');

SELECT ledger_triggers('chain_members', 'mv_chain_directory', $body$
    INSERT INTO chain_stat_deltas (chain_id, members) SELECT chain_id, sum(sign) FROM {changes} c GROUP BY chain_id;
$body$, rebuild => 'chain_directory_rebuild');

SELECT ledger_triggers('forum_threads', 'mv_chain_directory', $body$
    INSERT INTO chain_stat_deltas (chain_id, threads) SELECT chain_id, sum(sign) FROM {changes} c GROUP BY chain_id;
$body$, rebuild => 'chain_directory_rebuild');

-- A renamed user changes the owner's name shown on each of their chains.
SELECT ledger_triggers('users', 'mv_chain_directory', $body$
    INSERT INTO chain_stat_deltas (chain_id)
    SELECT c.id FROM chains c
    WHERE c.owner_id IN (SELECT id FROM {changes} c GROUP BY id HAVING count(DISTINCT username) > 1);
$body$, events => '{update}', rebuild => 'chain_directory_rebuild');

-- The fold's step (db/schema/ledgers.sql): the deltas of at most max_keys chains, added to their
-- rows, each row's other columns read again. It locks the chains FOR KEY SHARE SKIP LOCKED, as
-- project_counters_fold() does its projects, and touches the chains it folded and those it found
-- gone (their search documents show the member count).
CREATE FUNCTION chain_directory_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    SELECT coalesce(array_agg(id), '{}') INTO ids FROM (
        SELECT c.id FROM chains c
        WHERE c.id IN (SELECT DISTINCT chain_id FROM chain_stat_deltas ORDER BY chain_id LIMIT max_keys)
        ORDER BY c.id FOR KEY SHARE SKIP LOCKED) s;
    WITH moved AS (
        DELETE FROM chain_stat_deltas d USING unnest(ids) k(id) WHERE d.chain_id = k.id
        RETURNING d.chain_id, d.projects, d.members, d.threads
    ), agg AS (
        SELECT chain_id, sum(projects) AS p, sum(members) AS m, sum(threads) AS t, count(*) AS n
        FROM moved GROUP BY chain_id
    ), up AS (
        INSERT INTO mv_chain_directory AS d (chain_id, slug, name, description, owner_id, owner_username,
                                             project_count, member_count, thread_count, last_activity_at, created_at)
        SELECT c.id, c.slug, c.name, c.description, c.owner_id, u.username,
               coalesce(o.project_count, 0) + a.p, coalesce(o.member_count, 0) + a.m,
               coalesce(o.thread_count, 0) + a.t, chain_last_activity(c.id, c.created_at), c.created_at
        FROM agg a
        JOIN chains c ON c.id = a.chain_id
        JOIN users u ON u.id = c.owner_id
        LEFT JOIN mv_chain_directory o ON o.chain_id = c.id
        ON CONFLICT (chain_id) DO UPDATE SET
            slug = excluded.slug, name = excluded.name, description = excluded.description,
            owner_id = excluded.owner_id, owner_username = excluded.owner_username,
            project_count = excluded.project_count, member_count = excluded.member_count,
            thread_count = excluded.thread_count, last_activity_at = excluded.last_activity_at,
            created_at = excluded.created_at
    )
    SELECT count(*), coalesce(sum(n), 0), coalesce(array_agg(chain_id), '{}')
    INTO keys_folded, deltas_folded, touched_chains FROM agg;
    -- Deltas of chains deleted for good, and their rows.
    WITH gone AS (
        DELETE FROM chain_stat_deltas WHERE ctid IN (
            SELECT d.ctid FROM chain_stat_deltas d
            WHERE NOT EXISTS (SELECT 1 FROM chains c WHERE c.id = d.chain_id)
            FOR UPDATE SKIP LOCKED)
        RETURNING chain_id
    ), rows_gone AS (
        DELETE FROM mv_chain_directory d USING gone WHERE d.chain_id = gone.chain_id
    )
    SELECT touched_chains || coalesce(array_agg(DISTINCT chain_id), '{}') INTO touched_chains FROM gone;
    RETURN NEXT;
END $$;

-- These chains' rows set from the truth, in one statement that also consumes the deltas its
-- snapshot sees: they are in the truth it read, and a delta committed after it stays for the fold.
-- The rebuild and the reconciler's repair (under the fold's lock) run it.
CREATE FUNCTION chain_directory_set(keys bigint[]) RETURNS void
LANGUAGE sql AS $$
    WITH consumed AS (
        DELETE FROM chain_stat_deltas d WHERE keys IS NULL OR d.chain_id = ANY (keys)
    ), gone AS (
        DELETE FROM mv_chain_directory d
        WHERE (keys IS NULL OR d.chain_id = ANY (keys)) AND NOT EXISTS (SELECT 1 FROM chains c WHERE c.id = d.chain_id)
    )
    INSERT INTO mv_chain_directory AS d (chain_id, slug, name, description, owner_id, owner_username,
                                         project_count, member_count, thread_count, last_activity_at, created_at)
    SELECT chain_id, slug, name, description, owner_id, owner_username, project_count, member_count, thread_count,
           last_activity_at, created_at
    FROM mv_chain_directory_truth t WHERE keys IS NULL OR t.chain_id = ANY (keys)
    ON CONFLICT (chain_id) DO UPDATE SET
        slug = excluded.slug, name = excluded.name, description = excluded.description,
        owner_id = excluded.owner_id, owner_username = excluded.owner_username,
        project_count = excluded.project_count, member_count = excluded.member_count,
        thread_count = excluded.thread_count, last_activity_at = excluded.last_activity_at,
        created_at = excluded.created_at;
$$;

CREATE FUNCTION chain_directory_rebuild() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE mv_chain_directory, chain_stat_deltas;
    SELECT chain_directory_set(NULL);
$$;

-- =============================================================================================
-- db/readmodels/mv_forum_threads.sql
-- =============================================================================================

-- mv_forum_threads: one row per forum thread with its post count and last activity; as of the fold.
-- The chain page lists a chain's threads from it (mv_chain_directory.sql).
--
-- A table the fold keeps from a ledger of its own, as the chain directory is: a statement on posts
-- appends one delta row per thread it touched, and the fold adds them to the thread's count and
-- finds its last post again (one index probe). (It was a materialized view, refreshed whole: 0.3 s
-- at `standard`, 1.6 s at 4x.)

CREATE TABLE forum_thread_deltas (
    thread_id  bigint      NOT NULL,
    posts      bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX forum_thread_deltas_thread_id_idx ON forum_thread_deltas (thread_id);
ALTER TABLE forum_thread_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                     autovacuum_vacuum_insert_scale_factor = 0,
                                     autovacuum_vacuum_insert_threshold = 5000);

-- A thread item's JSON; effectively immutable, like feed_item_head() (mv_feed_projects.sql).
CREATE FUNCTION forum_thread_item(thread_id bigint, title text, author_username text, post_count bigint,
                                  last_post_at timestamptz, last_activity_at timestamptz, created_at timestamptz)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN '{"thread_id":' || thread_id || ',"title":' || json_str(title)
        || ',"author_username":' || json_str(author_username) || ',"post_count":' || post_count
        || ',"last_post_at":' || json_ts(last_post_at) || ',"last_activity_at":' || json_ts(last_activity_at)
        || ',"created_at":' || json_ts(created_at) || '}';
END $$;

CREATE TABLE mv_forum_threads (
    thread_id        bigint      PRIMARY KEY,
    chain_id         bigint      NOT NULL,
    title            text        NOT NULL,
    author_id        bigint      NOT NULL,
    author_username  text        NOT NULL,
    post_count       bigint      NOT NULL,
    last_post_at     timestamptz,
    last_activity_at timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    item             text        NOT NULL GENERATED ALWAYS AS (
        forum_thread_item(thread_id, title, author_username, post_count, last_post_at, last_activity_at,
                          created_at)) STORED
);
CREATE INDEX mv_forum_threads_chain_idx ON mv_forum_threads (chain_id, last_activity_at DESC, thread_id DESC);

-- The truth, from the source tables alone. A filter on thread_id reaches the scan of threads.
CREATE VIEW mv_forum_threads_truth AS
SELECT t.*, forum_thread_item(t.thread_id, t.title, t.author_username, t.post_count, t.last_post_at,
                              t.last_activity_at, t.created_at) AS item
FROM (
    SELECT t.id AS thread_id, t.chain_id, t.title, t.author_id, u.username AS author_username,
           (SELECT count(*) FROM forum_posts p WHERE p.thread_id = t.id) AS post_count,
           l.last_post_at, greatest(t.created_at, l.last_post_at) AS last_activity_at, t.created_at
    FROM forum_threads t
    JOIN users u ON u.id = t.author_id
    CROSS JOIN LATERAL (SELECT max(p.created_at) AS last_post_at FROM forum_posts p WHERE p.thread_id = t.id) l
) t;

-- The threads whose rows wait for the next fold (the reconciler leaves them out).
CREATE VIEW mv_forum_threads_pending AS SELECT DISTINCT thread_id FROM forum_thread_deltas;

-- ---------------------------------------------------------------------------------------------
-- Maintenance.

-- Rows are kept even when they net to zero: a changed time may change the thread's last post, and
-- a zero row brings the thread's title, chain or author along.
SELECT ledger_triggers('forum_threads', 'mv_forum_threads', $body$
    INSERT INTO forum_thread_deltas (thread_id) SELECT DISTINCT id FROM {changes} c;
$body$, rebuild => 'forum_threads_rebuild');

SELECT ledger_triggers('forum_posts', 'mv_forum_threads', $body$
    INSERT INTO forum_thread_deltas (thread_id, posts) SELECT thread_id, sum(sign) FROM {changes} c GROUP BY thread_id;
$body$, rebuild => 'forum_threads_rebuild');

-- A renamed user changes the author's name shown on each of their threads.
SELECT ledger_triggers('users', 'mv_forum_threads', $body$
    INSERT INTO forum_thread_deltas (thread_id)
    SELECT t.id FROM forum_threads t
    WHERE t.author_id IN (SELECT id FROM {changes} c GROUP BY id HAVING count(DISTINCT username) > 1);
$body$, events => '{update}', rebuild => 'forum_threads_rebuild');

-- The fold's step (db/schema/ledgers.sql); see chain_directory_fold(). Nothing follows threads.
CREATE FUNCTION forum_threads_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    SELECT coalesce(array_agg(id), '{}') INTO ids FROM (
        SELECT t.id FROM forum_threads t
        WHERE t.id IN (SELECT DISTINCT thread_id FROM forum_thread_deltas ORDER BY thread_id LIMIT max_keys)
        ORDER BY t.id FOR KEY SHARE SKIP LOCKED) s;
    WITH moved AS (
        DELETE FROM forum_thread_deltas d USING unnest(ids) k(id) WHERE d.thread_id = k.id
        RETURNING d.thread_id, d.posts
    ), agg AS (
        SELECT thread_id, sum(posts) AS posts, count(*) AS n FROM moved GROUP BY thread_id
    ), up AS (
        INSERT INTO mv_forum_threads AS f (thread_id, chain_id, title, author_id, author_username, post_count,
                                           last_post_at, last_activity_at, created_at)
        SELECT t.id, t.chain_id, t.title, t.author_id, u.username, coalesce(o.post_count, 0) + a.posts,
               l.last_post_at, greatest(t.created_at, l.last_post_at), t.created_at
        FROM agg a
        JOIN forum_threads t ON t.id = a.thread_id
        JOIN users u ON u.id = t.author_id
        CROSS JOIN LATERAL (SELECT max(p.created_at) AS last_post_at FROM forum_posts p WHERE p.thread_id = t.id) l
        LEFT JOIN mv_forum_threads o ON o.thread_id = t.id
        ON CONFLICT (thread_id) DO UPDATE SET
            chain_id = excluded.chain_id, title = excluded.title, author_id = excluded.author_id,
            author_username = excluded.author_username, post_count = excluded.post_count,
            last_post_at = excluded.last_post_at, last_activity_at = excluded.last_activity_at,
            created_at = excluded.created_at
    )
    SELECT count(*), coalesce(sum(n), 0) INTO keys_folded, deltas_folded FROM agg;
    -- Deltas of threads deleted for good, and their rows.
    WITH gone AS (
        DELETE FROM forum_thread_deltas WHERE ctid IN (
            SELECT d.ctid FROM forum_thread_deltas d
            WHERE NOT EXISTS (SELECT 1 FROM forum_threads t WHERE t.id = d.thread_id)
            FOR UPDATE SKIP LOCKED)
        RETURNING thread_id
    )
    DELETE FROM mv_forum_threads f USING gone WHERE f.thread_id = gone.thread_id;
    RETURN NEXT;
END $$;

-- These threads' rows set from the truth, consuming the deltas the same snapshot sees; see
-- chain_directory_set().
CREATE FUNCTION forum_threads_set(keys bigint[]) RETURNS void
LANGUAGE sql AS $$
    WITH consumed AS (
        DELETE FROM forum_thread_deltas d WHERE keys IS NULL OR d.thread_id = ANY (keys)
    ), gone AS (
        DELETE FROM mv_forum_threads f
        WHERE (keys IS NULL OR f.thread_id = ANY (keys))
          AND NOT EXISTS (SELECT 1 FROM forum_threads t WHERE t.id = f.thread_id)
    )
    INSERT INTO mv_forum_threads AS f (thread_id, chain_id, title, author_id, author_username, post_count,
                                       last_post_at, last_activity_at, created_at)
    SELECT thread_id, chain_id, title, author_id, author_username, post_count, last_post_at, last_activity_at,
           created_at
    FROM mv_forum_threads_truth t WHERE keys IS NULL OR t.thread_id = ANY (keys)
    ON CONFLICT (thread_id) DO UPDATE SET
        chain_id = excluded.chain_id, title = excluded.title, author_id = excluded.author_id,
        author_username = excluded.author_username, post_count = excluded.post_count,
        last_post_at = excluded.last_post_at, last_activity_at = excluded.last_activity_at,
        created_at = excluded.created_at;
$$;

CREATE FUNCTION forum_threads_rebuild() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE mv_forum_threads, forum_thread_deltas;
    SELECT forum_threads_set(NULL);
$$;

-- =============================================================================================
-- db/readmodels/mv_leaderboard_users.sql
-- =============================================================================================

-- mv_leaderboard_users: every user who owns a project, with the upvotes their projects drew, in
-- leaderboard order (an index); as of the fold. The route ranks the first thousand as it reads them.
--
-- A table the fold keeps for the owners of the projects whose counts it folded and for the users it
-- folded (a project that changed owner writes deltas for both owners; a renamed user, one for the
-- user): each such owner's totals are summed again from their projects' exact counters. So the
-- fold's work follows the owners whose projects moved. (It was a materialized view aggregating the
-- whole feed: 0.12 s at `standard`, 0.55 s at 4x, refreshed 58 times in 3 minutes of load.)

-- The item's JSON, after its rank: the route writes '{"rank":N,' before it.
CREATE FUNCTION leaderboard_user_item(user_id bigint, username text, display_name text, upvotes_received bigint,
                                      project_count bigint) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN '"user_id":' || user_id || ',"username":' || json_str(username)
        || ',"display_name":' || json_str(display_name) || ',"upvotes_received":' || upvotes_received
        || ',"project_count":' || project_count || '}';
END $$;

CREATE TABLE mv_leaderboard_users (
    user_id          bigint PRIMARY KEY,
    username         text   NOT NULL,
    display_name     text   NOT NULL,
    upvotes_received bigint NOT NULL,
    project_count    bigint NOT NULL,
    item_tail        text   NOT NULL GENERATED ALWAYS AS (
        leaderboard_user_item(user_id, username, display_name, upvotes_received, project_count)) STORED
);
CREATE INDEX mv_leaderboard_users_rank_idx ON mv_leaderboard_users (upvotes_received DESC, user_id DESC);

-- The truth, from the source tables alone. A filter on user_id reaches the scan of users.
CREATE VIEW mv_leaderboard_users_truth AS
SELECT t.*, leaderboard_user_item(t.user_id, t.username, t.display_name, t.upvotes_received, t.project_count)
           AS item_tail
FROM (
    SELECT u.id AS user_id, u.username, u.display_name,
           (SELECT count(*) FROM projects p JOIN project_upvotes v ON v.project_id = p.id
            WHERE p.owner_id = u.id) AS upvotes_received,
           o.project_count
    FROM users u
    CROSS JOIN LATERAL (SELECT count(*) AS project_count FROM projects p WHERE p.owner_id = u.id) o
    WHERE o.project_count > 0
) t;

-- The users whose rows wait for the next fold (the reconciler leaves them out): their own deltas
-- (a rename, a project that came or went) and their projects' counter deltas.
CREATE VIEW mv_leaderboard_users_pending AS
SELECT user_id FROM user_stat_deltas
UNION
SELECT p.owner_id FROM project_counter_deltas d JOIN projects p ON p.id = d.project_id;

-- ---------------------------------------------------------------------------------------------
-- Maintenance: nothing of its own is written by the triggers; the counters' and the users' ledgers
-- say who changed.

-- These users' rows, summed again from their projects' exact counters: kept when they own a
-- project, dropped otherwise (and when they are gone). Keys only (the whole table is the rebuild's):
-- a "keys IS NULL OR" here made the plan read every user, 0.9 s a fold at `standard`.
CREATE FUNCTION leaderboard_users_set(keys bigint[]) RETURNS void
LANGUAGE sql AS $$
    WITH fresh AS (
        SELECT u.id AS user_id, u.username, u.display_name, t.upvotes_received, t.project_count
        FROM users u
        CROSS JOIN LATERAL (
            SELECT count(*) AS project_count, coalesce(sum(c.upvote_count), 0)::bigint AS upvotes_received
            FROM projects p JOIN project_counters c ON c.project_id = p.id
            WHERE p.owner_id = u.id) t
        WHERE u.id = ANY (keys) AND t.project_count > 0
    ), gone AS (
        DELETE FROM mv_leaderboard_users l
        WHERE l.user_id = ANY (keys) AND NOT EXISTS (SELECT 1 FROM fresh f WHERE f.user_id = l.user_id)
    )
    INSERT INTO mv_leaderboard_users AS l (user_id, username, display_name, upvotes_received, project_count)
    SELECT * FROM fresh
    ON CONFLICT (user_id) DO UPDATE SET
        username = excluded.username, display_name = excluded.display_name,
        upvotes_received = excluded.upvotes_received, project_count = excluded.project_count
    -- A user touched for something the row does not show (a vote given, a message) leaves it as it
    -- was: it is not rewritten.
    WHERE (l.username, l.display_name, l.upvotes_received, l.project_count)
          IS DISTINCT FROM (excluded.username, excluded.display_name, excluded.upvotes_received,
                            excluded.project_count);
$$;

-- The fold's step (db/schema/ledgers.sql): the owners of the projects the steps before touched, and
-- the users they touched.
CREATE FUNCTION leaderboard_users_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    owners bigint[];
BEGIN
    SELECT coalesce(array_agg(DISTINCT id), '{}') INTO owners FROM (
        SELECT p.owner_id AS id FROM projects p WHERE p.id = ANY (moved_projects)
        UNION ALL
        SELECT unnest(moved_users)) o;
    IF cardinality(owners) > 0 THEN
        PERFORM leaderboard_users_set(owners);
    END IF;
    keys_folded := cardinality(owners);
    deltas_folded := 0;
    RETURN NEXT;
END $$;

-- Whole, from the source tables in one pass (not from the counters: after a TRUNCATE of the
-- upvotes this runs in a trigger that may come before the counters' own rebuild).
CREATE FUNCTION leaderboard_users_rebuild() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE mv_leaderboard_users;
    INSERT INTO mv_leaderboard_users (user_id, username, display_name, upvotes_received, project_count)
    SELECT u.id, u.username, u.display_name, coalesce(sum(v.n), 0)::bigint, count(*)
    FROM users u
    JOIN projects p ON p.owner_id = u.id
    LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v ON v.project_id = p.id
    GROUP BY u.id;
$$;

SELECT rebuild_on_truncate('users', 'mv_leaderboard_users', 'leaderboard_users_rebuild');
SELECT rebuild_on_truncate('projects', 'mv_leaderboard_users', 'leaderboard_users_rebuild');
SELECT rebuild_on_truncate('project_upvotes', 'mv_leaderboard_users', 'leaderboard_users_rebuild');

-- =============================================================================================
-- db/readmodels/mv_search_documents.sql
-- =============================================================================================

-- mv_search_documents and mv_search_words: full-text, typo-tolerant search over projects, users and
-- chains; as of the fold.
--
-- Both are tables the fold keeps (db/schema/ledgers.sql). A statement on projects, users or chains
-- marks each row it touched in search_document_changes; the fold builds those documents again
-- from their source rows, and moves each word of the vocabulary by the documents that gained or
-- lost it. A document's popularity (upvotes for a project, members for a chain, 0 for a user)
-- follows the counts the fold's earlier steps folded, in steps of about 28% (below), so a vote
-- rarely rewrites a document. So a rename costs one document and a few words, whatever the size of
-- the corpus. (They were materialized views refreshed whole: 3.9 s and 2.0 s at `standard`, 16 s
-- and 35 s at 4x.)
--
-- A search reads one page in an order an index gives: the documents that have every query word in
-- their head (a project's title, a user's names, a chain's name) first, then those that have them
-- elsewhere; within each, the most popular first (search_page(), below). So a page of a common
-- word costs the same at any size of the corpus, where ranking every match grew with it (ranking
-- the 200 most popular matches of each type cost 5.6 ms at `standard`).

CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gin;

-- A count as a popularity: the natural log of 1 + n, in quarters. It moves at n = 1, 2, 3, 4, 5, 7,
-- 10, 13, ... and then every 28% or so: a popular project's document is rewritten once in many
-- votes, where an exact count would rewrite it (and its full-text index entries) for each.
CREATE FUNCTION search_popularity(n bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN floor(ln(1 + greatest(n, 0)) * 4)::integer;

CREATE TABLE search_document_changes (
    doc_type   text        NOT NULL,
    doc_id     bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX search_document_changes_key_idx ON search_document_changes (doc_type, doc_id);
ALTER TABLE search_document_changes SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                         autovacuum_vacuum_insert_scale_factor = 0,
                                         autovacuum_vacuum_insert_threshold = 5000);

CREATE TABLE mv_search_documents (
    doc_type   text     NOT NULL,
    doc_id     bigint   NOT NULL,
    title      text     NOT NULL,
    subtitle   text     NOT NULL,
    slug       text,
    head       tsvector NOT NULL,  -- the words that put a document in the first tier
    document   tsvector NOT NULL,  -- all of its words, weighted
    words      text     NOT NULL,  -- what the vocabulary counts
    popularity integer  NOT NULL,
    PRIMARY KEY (doc_id, doc_type)
);
-- The walk in popularity order, with both vectors in the index, so that a walk reads no table page
-- (an index-only scan: the fold's writes leave a page to be read until the next vacuum, hence the
-- eager autovacuum).
CREATE INDEX mv_search_documents_popular_idx ON mv_search_documents (doc_type, popularity DESC, doc_id DESC)
    INCLUDE (head, document);
-- The rare words' matches, per type (btree_gin): each tier has its index. A search reads an index's
-- whole pending list (new entries not yet merged), so it is kept short: 256 kB, not 4 MB (2 MB of
-- pending entries doubled a search's cost at `standard`).
CREATE INDEX mv_search_documents_head_idx ON mv_search_documents USING gin (doc_type, head)
    WITH (gin_pending_list_limit = 256);
CREATE INDEX mv_search_documents_fts_idx ON mv_search_documents USING gin (doc_type, document)
    WITH (gin_pending_list_limit = 256);
ALTER TABLE mv_search_documents SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.01);

-- The vocabulary of the documents' titles and names, for correcting a misspelled query word by
-- trigrams: each word with the number of documents that have it. A word is corrected only to a
-- word found in at least two documents: most of the vocabulary is usernames, each in one
-- document, and the nearest-trigram search over all 105k words took 6 ms at `standard`; over the
-- words in two documents or more, 0.1 ms.
CREATE TABLE mv_search_words (
    word text    PRIMARY KEY,
    ndoc integer NOT NULL
);
CREATE INDEX mv_search_words_trgm_idx ON mv_search_words USING gist (word gist_trgm_ops) WHERE ndoc >= 2;

-- The words of a document, each once: what the vocabulary counts.
CREATE FUNCTION search_words_of(words text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN tsvector_to_array(to_tsvector('simple', words));

-- The truths, from the source tables alone. A filter on doc_id (and doc_type) reaches the scan of
-- each source; a reader of some columns computes only those (the fold reads the text, and counts
-- popularity from the counters it just folded).
CREATE VIEW mv_search_documents_truth AS
SELECT 'project'::text AS doc_type, p.id AS doc_id, p.title, p.tagline AS subtitle, NULL::text AS slug,
       to_tsvector('english', p.title) AS head,
       setweight(to_tsvector('english', p.title), 'A')
           || setweight(to_tsvector('english', p.tagline), 'B')
           || setweight(to_tsvector('english', p.description), 'C')
           || setweight(to_tsvector('english', array_to_string(p.tags, ' ')), 'B') AS document,
       lower(p.title || ' ' || p.tagline) AS words,
       search_popularity((SELECT count(*) FROM project_upvotes v WHERE v.project_id = p.id)) AS popularity
FROM projects p
UNION ALL
SELECT 'user', u.id, u.display_name, u.username, u.username,
       to_tsvector('english', u.username) || to_tsvector('english', u.display_name),
       setweight(to_tsvector('english', u.username), 'A')
           || setweight(to_tsvector('english', u.display_name), 'A')
           || setweight(to_tsvector('english', u.bio), 'C'),
       lower(u.username || ' ' || u.display_name),
       0
FROM users u
UNION ALL
SELECT 'chain', c.id, c.name, c.description, c.slug,
       to_tsvector('english', c.name),
       setweight(to_tsvector('english', c.name), 'A') || setweight(to_tsvector('english', c.description), 'B'),
       lower(c.name || ' ' || c.slug),
       search_popularity((SELECT count(*) FROM chain_members m WHERE m.chain_id = c.id))
FROM chains c;

CREATE VIEW mv_search_words_truth AS
SELECT w AS word, count(*)::integer AS ndoc
FROM mv_search_documents_truth t, unnest(search_words_of(t.words)) w
GROUP BY w;

-- What waits for the next fold (the reconciler leaves it out): documents marked, and those whose
-- project's or chain's count is not folded yet; the words of the marked documents, as they are and
-- as they will be.
CREATE VIEW mv_search_documents_pending AS
SELECT doc_id, doc_type FROM search_document_changes
UNION
SELECT project_id, 'project' FROM project_counter_deltas
UNION
SELECT chain_id, 'chain' FROM chain_stat_deltas;

CREATE VIEW mv_search_words_pending AS
WITH marked AS (SELECT DISTINCT doc_type, doc_id FROM search_document_changes)
SELECT unnest(search_words_of(d.words)) AS word FROM mv_search_documents d JOIN marked USING (doc_type, doc_id)
UNION
SELECT unnest(search_words_of(t.words)) FROM mv_search_documents_truth t JOIN marked USING (doc_type, doc_id);

-- ---------------------------------------------------------------------------------------------
-- Maintenance.

SELECT ledger_triggers('projects', 'mv_search_documents', $body$
    INSERT INTO search_document_changes (doc_type, doc_id) SELECT DISTINCT 'project', id FROM {changes} c;
$body$, rebuild => 'search_documents_rebuild');

SELECT ledger_triggers('users', 'mv_search_documents', $body$
    INSERT INTO search_document_changes (doc_type, doc_id) SELECT DISTINCT 'user', id FROM {changes} c;
$body$, rebuild => 'search_documents_rebuild');

SELECT ledger_triggers('chains', 'mv_search_documents', $body$
    INSERT INTO search_document_changes (doc_type, doc_id) SELECT DISTINCT 'chain', id FROM {changes} c;
$body$, rebuild => 'search_documents_rebuild');

-- These documents built again from their sources (dropped where the source is gone), their
-- popularity from the exact counters, and the vocabulary moved by the words they gained and lost,
-- in one statement: what it reads of the documents is as they were before it. With `recount` (the
-- reconciler's repair, when the documents themselves may have been wrong) each of those words is
-- counted again from the documents instead.
CREATE FUNCTION search_documents_set(types text[], ids bigint[], recount boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    moved text[];
BEGIN
    WITH keys AS (
        SELECT DISTINCT k.doc_type, k.doc_id FROM unnest(types, ids) AS k(doc_type, doc_id)
    ), old AS (
        SELECT d.doc_type, d.doc_id, d.words FROM mv_search_documents d JOIN keys USING (doc_type, doc_id)
    ), fresh AS (
        SELECT t.doc_type, t.doc_id, t.title, t.subtitle, t.slug, t.head, t.document, t.words,
               CASE t.doc_type
                   WHEN 'project' THEN search_popularity((SELECT c.upvote_count FROM project_counters c
                                                          WHERE c.project_id = t.doc_id))
                   WHEN 'chain' THEN search_popularity((SELECT x.member_count FROM mv_chain_directory x
                                                        WHERE x.chain_id = t.doc_id))
                   ELSE 0 END AS popularity
        FROM mv_search_documents_truth t JOIN keys USING (doc_type, doc_id)
    ), gone AS (
        DELETE FROM mv_search_documents d USING keys k
        WHERE d.doc_type = k.doc_type AND d.doc_id = k.doc_id
          AND NOT EXISTS (SELECT 1 FROM fresh f WHERE f.doc_type = k.doc_type AND f.doc_id = k.doc_id)
    ), up AS (
        INSERT INTO mv_search_documents AS d (doc_type, doc_id, title, subtitle, slug, head, document, words,
                                              popularity)
        SELECT doc_type, doc_id, title, subtitle, slug, head, document, words, popularity FROM fresh
        ON CONFLICT (doc_id, doc_type) DO UPDATE SET
            title = excluded.title, subtitle = excluded.subtitle, slug = excluded.slug, head = excluded.head,
            document = excluded.document, words = excluded.words, popularity = excluded.popularity
        WHERE (d.title, d.subtitle, d.slug, d.head, d.document, d.words, d.popularity)
              IS DISTINCT FROM (excluded.title, excluded.subtitle, excluded.slug, excluded.head, excluded.document,
                                excluded.words, excluded.popularity)
    ), word_deltas AS (
        SELECT w AS word, sum(s) AS n FROM (
            SELECT unnest(search_words_of(words)) AS w, -1 AS s FROM old
            UNION ALL
            SELECT unnest(search_words_of(words)), 1 FROM fresh) x
        GROUP BY w
    ), words_up AS (
        INSERT INTO mv_search_words AS v (word, ndoc) SELECT word, n FROM word_deltas WHERE n <> 0 AND NOT recount
        ON CONFLICT (word) DO UPDATE SET ndoc = v.ndoc + excluded.ndoc
    )
    SELECT coalesce(array_agg(word), '{}') INTO moved FROM word_deltas WHERE recount OR n < 0;
    IF recount THEN
        PERFORM search_words_repair(moved);
    ELSE
        DELETE FROM mv_search_words WHERE word = ANY (moved) AND ndoc <= 0;
    END IF;
END $$;

-- The fold's step (db/schema/ledgers.sql): the documents marked (at most max_keys), built again;
-- then the popularity of the projects and chains whose counts the steps before folded. A mark
-- consumed before the sources are read: a change that commits in between is read now, and its
-- own mark, if this statement did not see it, brings the document back at the next fold.
CREATE FUNCTION search_documents_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    types text[];
    ids bigint[];
BEGIN
    WITH keys AS (
        SELECT DISTINCT doc_type, doc_id FROM search_document_changes ORDER BY doc_type, doc_id LIMIT max_keys
    ), marks AS (
        DELETE FROM search_document_changes m USING keys k
        WHERE m.doc_type = k.doc_type AND m.doc_id = k.doc_id
        RETURNING m.doc_type
    )
    SELECT coalesce(array_agg(doc_type), '{}'), coalesce(array_agg(doc_id), '{}'), (SELECT count(*) FROM marks)
    INTO types, ids, deltas_folded FROM keys;
    IF cardinality(ids) > 0 THEN
        PERFORM search_documents_set(types, ids);
    END IF;
    keys_folded := cardinality(ids);
    UPDATE mv_search_documents d SET popularity = search_popularity(c.upvote_count)
    FROM project_counters c
    WHERE d.doc_type = 'project' AND d.doc_id = c.project_id AND c.project_id = ANY (moved_projects)
      AND d.popularity <> search_popularity(c.upvote_count);
    UPDATE mv_search_documents d SET popularity = search_popularity(x.member_count)
    FROM mv_chain_directory x
    WHERE d.doc_type = 'chain' AND d.doc_id = x.chain_id AND x.chain_id = ANY (moved_chains)
      AND d.popularity <> search_popularity(x.member_count);
    RETURN NEXT;
END $$;

-- The reconciler's repairs, under the fold's lock: words counted again from the documents (a scan
-- of them all); and documents of these ids (every type) built again, with their words counted
-- again.
CREATE FUNCTION search_words_repair(keys text[]) RETURNS void
LANGUAGE sql AS $$
    WITH counted AS (
        SELECT w AS word, count(*) AS ndoc FROM mv_search_documents d, unnest(search_words_of(d.words)) w
        WHERE w = ANY (keys) GROUP BY w
    ), gone AS (
        DELETE FROM mv_search_words v WHERE v.word = ANY (keys) AND NOT EXISTS (SELECT 1 FROM counted c
                                                                                WHERE c.word = v.word)
    )
    INSERT INTO mv_search_words AS v (word, ndoc) SELECT word, ndoc FROM counted
    ON CONFLICT (word) DO UPDATE SET ndoc = excluded.ndoc;
$$;

CREATE FUNCTION search_documents_repair(keys bigint[]) RETURNS void
LANGUAGE sql AS $$
    SELECT search_documents_set(array_agg(t), array_agg(k), recount => true)
    FROM unnest(keys) k, unnest(ARRAY['project', 'user', 'chain']) t;
$$;

CREATE FUNCTION search_documents_rebuild() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE mv_search_documents, mv_search_words, search_document_changes;
    INSERT INTO mv_search_documents (doc_type, doc_id, title, subtitle, slug, head, document, words, popularity)
    SELECT doc_type, doc_id, title, subtitle, slug, head, document, words, popularity FROM mv_search_documents_truth;
    INSERT INTO mv_search_words (word, ndoc)
    SELECT w, count(*) FROM mv_search_documents d, unnest(search_words_of(d.words)) w GROUP BY w;
$$;

-- A TRUNCATE of the upvotes or of the members fires no row trigger: every popularity is counted again.
SELECT rebuild_on_truncate('project_upvotes', 'mv_search_documents', 'search_documents_rebuild');
SELECT rebuild_on_truncate('chain_members', 'mv_search_documents', 'search_documents_rebuild');

-- ---------------------------------------------------------------------------------------------
-- Reading: a page of matches in the order (tier, popularity, type, doc_id), all descending, where
-- tier 2 is a document with every query word in its head and tier 1 one with them elsewhere, and
-- the types rank project, chain, user. The order is an index's, so a page costs what it reads, and
-- the next page starts where it stopped (the cursor is its last item).

CREATE FUNCTION search_type_rank(doc_type text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE doc_type WHEN 'project' THEN 3 WHEN 'chain' THEN 2 ELSE 1 END;

-- The first `n` matches of one type and tier after (after_popularity, after_id) and more popular
-- than `above`, through the GIN index of the tier: every match is read and sorted, which is cheap
-- for a rare word only. The only plan allowed: a generic plan would rather walk the popularity
-- index, which for a rare word reads the whole type.
CREATE FUNCTION search_rare(q tsquery, wanted text, tier integer, after_popularity integer, after_id bigint,
                            n integer, above integer)
RETURNS TABLE (doc_id bigint, popularity integer)
LANGUAGE sql STABLE
SET enable_indexscan = off SET enable_seqscan = off SET enable_indexonlyscan = off
AS $$
    SELECT d.doc_id, d.popularity FROM mv_search_documents d
    WHERE d.doc_type = wanted AND (d.popularity, d.doc_id) < (after_popularity, after_id) AND d.popularity > above
      AND tier = 2 AND d.head @@ q
    UNION ALL
    SELECT d.doc_id, d.popularity FROM mv_search_documents d
    WHERE d.doc_type = wanted AND (d.popularity, d.doc_id) < (after_popularity, after_id) AND d.popularity > above
      AND tier = 1 AND d.document @@ q AND NOT d.head @@ q
    ORDER BY 2 DESC, 1 DESC
    LIMIT n
$$;

-- The first `n` matches of one type and tier after (after_popularity, after_id) and more popular
-- than `above` (what could still enter the page). A probe of the next 4n documents in popularity
-- order says how common the query is among them:
-- - none matched: the query is rare (under one in 4n), and the GIN index finds its few matches;
-- - some did: the walk goes on, each stretch as far as twice what the share so far predicts (and
--   at most twice what was walked), until the page is full; a stretch with no match at all hands
--   what is left to the GIN index (a query common only among the less popular).
-- A query common everywhere (the usual case) is answered by the walk after n / share documents,
-- whatever the size of the corpus. The walk reads the popularity index only (head and document
-- are in it); its statement is PL/pgSQL's, so its plan is made once per session.
CREATE FUNCTION search_stream(q tsquery, wanted text, tier integer, after_popularity integer, after_id bigint,
                              n integer, above integer)
RETURNS TABLE (doc_id bigint, popularity integer)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    chunk integer := 4 * n;  -- the first stretch: the probe
    ids bigint[] := '{}';
    pops integer[] := '{}';
    ap integer := after_popularity;
    ai bigint := after_id;
    hit_ids bigint[];
    hit_pops integer[];
    walked bigint;
    total bigint := 0;
BEGIN
    FOR round IN 1..8 LOOP
        SELECT coalesce(array_agg(w.doc_id) FILTER (WHERE w.hit), '{}'),
               coalesce(array_agg(w.popularity) FILTER (WHERE w.hit), '{}'),
               count(*), (array_agg(w.popularity))[count(*)], (array_agg(w.doc_id))[count(*)]
        INTO hit_ids, hit_pops, walked, ap, ai
        FROM (SELECT d.popularity, d.doc_id,
                     CASE WHEN tier = 2 THEN d.head @@ q ELSE d.document @@ q AND NOT d.head @@ q END AS hit
              FROM mv_search_documents d
              WHERE d.doc_type = wanted AND (d.popularity, d.doc_id) < (ap, ai) AND d.popularity > above
              ORDER BY d.popularity DESC, d.doc_id DESC
              LIMIT chunk) w;  -- the aggregates read the rows in this order
        ids := ids || hit_ids;
        pops := pops || hit_pops;
        total := total + walked;
        IF cardinality(ids) >= n OR walked < chunk THEN  -- enough, or all there is was read
            RETURN QUERY SELECT * FROM unnest(ids[1:n], pops[1:n]);
            RETURN;
        END IF;
        EXIT WHEN cardinality(hit_ids) = 0;
        chunk := least(ceil(2.0 * (n - cardinality(ids)) * total / cardinality(ids)), 2 * total);
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(ids, pops)
                 UNION ALL
                 SELECT * FROM search_rare(q, wanted, tier, ap, ai, n - cardinality(ids), above);
END $$;

-- A page: the first `n` matches after the cursor (after_tier, after_popularity, after_type,
-- after_id), in the order above, each type's stream read as far as the page needs. The types are
-- read in rank order, so once the page is full a later type's document enters it only if it is
-- more popular than the page's last item: the next stream reads above it. With a common word the
-- projects fill the page, and the users (all of popularity 0) are not read at all.
-- (ROWS: a page, so that the planner joins its rows to the documents by key.)
CREATE FUNCTION search_page(q tsquery, wanted text, after_tier integer, after_popularity integer, after_type text,
                            after_id bigint, n integer)
RETURNS TABLE (tier integer, popularity integer, doc_type text, doc_id bigint)
LANGUAGE plpgsql STABLE ROWS 20 AS $$
DECLARE
    need integer := n;
    got integer;
    t text;
    ai bigint;
    above integer;
    pops integer[];
    types text[];
    ids bigint[];
BEGIN
    IF q IS NULL OR numnode(q) = 0 THEN  -- no words, or stop words only
        RETURN;
    END IF;
    FOR k IN REVERSE 2..1 LOOP
        CONTINUE WHEN k > after_tier;
        pops := '{}';
        types := '{}';
        ids := '{}';
        FOREACH t IN ARRAY CASE WHEN wanted IS NULL THEN ARRAY['project', 'chain', 'user'] ELSE ARRAY[wanted] END LOOP
            -- After the cursor's own type, its ties of popularity are past; before it, still to come.
            ai := CASE WHEN k < after_tier THEN 9223372036854775807
                       WHEN search_type_rank(t) < search_type_rank(after_type) THEN 9223372036854775807
                       WHEN search_type_rank(t) > search_type_rank(after_type) THEN 0
                       ELSE after_id END;
            above := -1;
            IF cardinality(ids) >= need THEN
                SELECT u.p INTO above FROM unnest(pops) u(p) ORDER BY u.p DESC OFFSET need - 1 LIMIT 1;
            END IF;
            SELECT pops || coalesce(array_agg(s.popularity), '{}'), types || coalesce(array_agg(t), '{}'),
                   ids || coalesce(array_agg(s.doc_id), '{}')
            INTO pops, types, ids
            FROM search_stream(q, t, k, CASE WHEN k < after_tier THEN 2147483647 ELSE after_popularity END, ai,
                               need, above) s;
        END LOOP;
        RETURN QUERY
        SELECT k, u.p, u.ty, u.id FROM unnest(pops, types, ids) u(p, ty, id)
        ORDER BY u.p DESC, search_type_rank(u.ty) DESC, u.id DESC
        LIMIT need;
        GET DIAGNOSTICS got = ROW_COUNT;
        need := need - got;
        EXIT WHEN need <= 0;
    END LOOP;
END $$;

-- ---------------------------------------------------------------------------------------------
-- The trigger bodies in the order a fresh database records them (each read model's file in the
-- registry's order), and every source's trigger functions made again from them.

ALTER TABLE ledger_trigger_bodies ALTER COLUMN position RESTART WITH 1;
WITH recorded AS (DELETE FROM ledger_trigger_bodies RETURNING *)
INSERT INTO ledger_trigger_bodies (source, event, model, body)
SELECT source, event, model, body FROM recorded
ORDER BY array_position(ARRAY['project_counters', 'user_stats', 'conversations', 'mv_chain_directory', 'mv_forum_threads', 'mv_feed_projects', 'mv_chain_projects', 'mv_leaderboard_users', 'mv_search_documents'], model), position;
SELECT ledger_triggers_install(source::regclass) FROM (SELECT DISTINCT source FROM ledger_trigger_bodies) s;

-- ---------------------------------------------------------------------------------------------
-- The new tables filled from the source (the chain directory first: a chain's search document
-- takes its popularity from it).

SELECT chain_directory_rebuild();
SELECT forum_threads_rebuild();
SELECT leaderboard_users_rebuild();
SELECT search_documents_rebuild();
