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

-- ---------------------------------------------------------------------------------------------
-- Reads.

-- A page of a chain's threads in the chain page's order (latest activity first, as of the fold),
-- after the keyset cursor (last_activity_at, thread_id): the items as a JSON array, and the
-- next_cursor (page_cursor(), kind 'chain_threads') as JSON.
CREATE FUNCTION chain_threads_page(chain bigint, after_at timestamptz, after_id bigint, n integer)
RETURNS TABLE (items text, next_cursor text)
LANGUAGE sql STABLE AS $$
    SELECT '[' || coalesce(string_agg(t.item, ','), '') || ']',
           CASE WHEN count(*) = n
                THEN page_cursor('chain_threads', json_ts((array_agg(t.last_activity_at))[count(*)]) || ','
                                                  || (array_agg(t.thread_id))[count(*)])
                ELSE 'null' END
    FROM (SELECT thread_id, last_activity_at, item
          FROM mv_forum_threads
          WHERE chain_id = chain AND (last_activity_at, thread_id) < (after_at, after_id)
          ORDER BY last_activity_at DESC, thread_id DESC
          LIMIT n) t
$$;

-- name: chain_threads
-- GET /api/chains/{slug}/threads: a page of the chain's threads; no row when there is no such chain.
SELECT '{"items":' || tp.items || ',"next_cursor":' || tp.next_cursor
       || ',"as_of":' || (SELECT json_ts(as_of) FROM read_model_freshness WHERE clock = 'fold') || '}'
FROM chains ch
CROSS JOIN LATERAL chain_threads_page(ch.id, %(after_at)s::timestamptz, %(after_id)s::bigint, %(limit)s::int) tp
WHERE ch.slug = %(slug)s::text
