-- Phases 2 to 4: the refreshed read models, their refresh queue, search, and the indexes the API needs.
--
-- docs/refreshed-views.md explains the design: mv_feed_projects is kept incrementally by the fold
-- (its cost follows the changes, not the dataset); the seven materialized views are refreshed
-- CONCURRENTLY by the refresher from a debounced queue that writers feed without taking a lock.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- ---------------------------------------------------------------------------------------------
-- Scores. Both depend only on counts and the creation time, never on now(): a ranking built today
-- is still right tomorrow, so no refresh is needed just because time passed.

-- Reddit's "hot": each tenfold of upvotes is worth 12.5 hours of recency (45000 s per log10 unit).
CREATE FUNCTION trending_score(upvotes bigint, created_at timestamptz) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN log(greatest(upvotes, 1)::float8) + (date_part('epoch', created_at) - 1134028003) / 45000.0;

-- The lower bound of the 95% Wilson score interval for the share of approving engagements, where
-- an engagement is an upvote (approving) or a comment (the only other signal the product records).
-- A project with 3 upvotes does not outrank one with 300 upvotes and 10 comments.
CREATE FUNCTION proof_score(upvotes bigint, comments bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN upvotes + comments = 0 THEN 0 ELSE (
    (upvotes::float8 / (upvotes + comments) + 1.9208 / (upvotes + comments)
     - 1.96 * sqrt((upvotes::float8 / (upvotes + comments)) * (comments::float8 / (upvotes + comments))
                   / (upvotes + comments) + 0.9604 / ((upvotes + comments)::float8 ^ 2)))
    / (1 + 3.8416 / (upvotes + comments))) END;

-- ---------------------------------------------------------------------------------------------
-- The feed: a table the fold keeps, row by row, for the projects whose counters it folds.

CREATE TABLE mv_feed_projects (
    id             bigint      PRIMARY KEY,
    owner_id       bigint      NOT NULL,
    username       text        NOT NULL,
    title          text        NOT NULL,
    tagline        text        NOT NULL,
    tags           text[]      NOT NULL,
    upvote_count   bigint      NOT NULL,
    comment_count  bigint      NOT NULL,
    trending_score float8      NOT NULL,
    proof_score    float8      NOT NULL,
    created_at     timestamptz NOT NULL
);
-- Keyset pages for the three sorts: (score, id) so that ties still have one order.
CREATE INDEX mv_feed_projects_trending_idx ON mv_feed_projects (trending_score DESC, id DESC);
CREATE INDEX mv_feed_projects_proof_idx ON mv_feed_projects (proof_score DESC, id DESC);
CREATE INDEX mv_feed_projects_newest_idx ON mv_feed_projects (created_at DESC, id DESC);
CREATE INDEX mv_feed_projects_upvotes_idx ON mv_feed_projects (upvote_count DESC, id DESC);

CREATE VIEW mv_feed_projects_truth AS
SELECT p.id, p.owner_id, u.username, p.title, p.tagline, p.tags, c.upvote_count, c.comment_count,
       trending_score(c.upvote_count, p.created_at) AS trending_score,
       proof_score(c.upvote_count, c.comment_count) AS proof_score,
       p.created_at
FROM projects p
JOIN users u ON u.id = p.owner_id
JOIN project_counters_truth c ON c.project_id = p.id;

-- Bring the feed rows of these projects up to date: upsert the ones that exist, drop the rest.
CREATE FUNCTION feed_apply(ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    WITH fresh AS (
        SELECT p.id, p.owner_id, u.username, p.title, p.tagline, p.tags, c.upvote_count, c.comment_count,
               trending_score(c.upvote_count, p.created_at) AS trending_score,
               proof_score(c.upvote_count, c.comment_count) AS proof_score,
               p.created_at
        FROM unnest(ids) AS k(id)
        JOIN projects p ON p.id = k.id
        JOIN users u ON u.id = p.owner_id
        JOIN project_counters c ON c.project_id = p.id
    ), gone AS (
        DELETE FROM mv_feed_projects f USING unnest(ids) AS k(id)
        WHERE f.id = k.id AND NOT EXISTS (SELECT 1 FROM fresh WHERE fresh.id = k.id)
    )
    INSERT INTO mv_feed_projects AS f
    SELECT * FROM fresh
    ON CONFLICT (id) DO UPDATE SET
        owner_id = excluded.owner_id, username = excluded.username, title = excluded.title,
        tagline = excluded.tagline, tags = excluded.tags, upvote_count = excluded.upvote_count,
        comment_count = excluded.comment_count, trending_score = excluded.trending_score,
        proof_score = excluded.proof_score, created_at = excluded.created_at;
$$;

CREATE FUNCTION rebuild_feed() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE mv_feed_projects;
    INSERT INTO mv_feed_projects SELECT * FROM mv_feed_projects_truth;
$$;

-- A renamed user changes the username shown on each of their projects: mark those for the fold.
CREATE FUNCTION rm_users_renamed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO project_counter_deltas (project_id)
    SELECT p.id FROM new_rows n JOIN old_rows o ON o.id = n.id AND o.username IS DISTINCT FROM n.username
    JOIN projects p ON p.owner_id = n.id;
    RETURN NULL;
END $$;
CREATE TRIGGER trg_users_renamed AFTER UPDATE ON users
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rm_users_renamed();

SELECT rebuild_feed();

-- ---------------------------------------------------------------------------------------------
-- The materialized views.

-- The 1000 most upvoted projects, read from the feed table (an index scan, not an aggregate).
CREATE MATERIALIZED VIEW mv_leaderboard_projects AS
SELECT row_number() OVER (ORDER BY upvote_count DESC, id DESC) AS rank,
       id AS project_id, title, owner_id, username, upvote_count, comment_count, created_at
FROM (SELECT * FROM mv_feed_projects ORDER BY upvote_count DESC, id DESC LIMIT 1000) top;
CREATE UNIQUE INDEX mv_leaderboard_projects_key ON mv_leaderboard_projects (project_id);
CREATE INDEX mv_leaderboard_projects_rank_idx ON mv_leaderboard_projects (rank);

-- The 1000 users whose projects drew the most upvotes.
CREATE MATERIALIZED VIEW mv_leaderboard_users AS
SELECT row_number() OVER (ORDER BY t.upvotes_received DESC, t.user_id DESC) AS rank,
       t.user_id, u.username, u.display_name, t.upvotes_received, t.project_count
FROM (
    SELECT owner_id AS user_id, sum(upvote_count)::bigint AS upvotes_received, count(*) AS project_count
    FROM mv_feed_projects GROUP BY owner_id
    ORDER BY upvotes_received DESC, owner_id DESC LIMIT 1000
) t
JOIN users u ON u.id = t.user_id;
CREATE UNIQUE INDEX mv_leaderboard_users_key ON mv_leaderboard_users (user_id);
CREATE INDEX mv_leaderboard_users_rank_idx ON mv_leaderboard_users (rank);

CREATE MATERIALIZED VIEW mv_chain_directory AS
SELECT c.id AS chain_id, c.slug, c.name, c.description, c.owner_id, u.username AS owner_username,
       coalesce(cp.n, 0) AS project_count, coalesce(cm.n, 0) AS member_count, coalesce(ft.n, 0) AS thread_count,
       greatest(c.created_at, cp.last_at, cm.last_at, ft.last_at) AS last_activity_at, c.created_at
FROM chains c
JOIN users u ON u.id = c.owner_id
LEFT JOIN (SELECT chain_id, count(*) AS n, max(added_at) AS last_at FROM chain_projects GROUP BY chain_id) cp
       ON cp.chain_id = c.id
LEFT JOIN (SELECT chain_id, count(*) AS n, max(joined_at) AS last_at FROM chain_members GROUP BY chain_id) cm
       ON cm.chain_id = c.id
LEFT JOIN (SELECT chain_id, count(*) AS n, max(created_at) AS last_at FROM forum_threads GROUP BY chain_id) ft
       ON ft.chain_id = c.id;
CREATE UNIQUE INDEX mv_chain_directory_key ON mv_chain_directory (chain_id);
CREATE UNIQUE INDEX mv_chain_directory_slug_idx ON mv_chain_directory (slug);
CREATE INDEX mv_chain_directory_members_idx ON mv_chain_directory (member_count DESC, chain_id DESC);

-- One chain's projects, best first: the body of GET /api/chains/{slug}.
CREATE MATERIALIZED VIEW mv_chain_projects AS
SELECT cp.chain_id, cp.project_id, f.title, f.tagline, f.username, f.upvote_count, f.comment_count, cp.added_at
FROM chain_projects cp
JOIN mv_feed_projects f ON f.id = cp.project_id;
CREATE UNIQUE INDEX mv_chain_projects_key ON mv_chain_projects (chain_id, project_id);
CREATE INDEX mv_chain_projects_rank_idx ON mv_chain_projects (chain_id, upvote_count DESC, project_id DESC);

CREATE MATERIALIZED VIEW mv_forum_threads AS
SELECT t.id AS thread_id, t.chain_id, t.title, t.author_id, u.username AS author_username,
       coalesce(p.n, 0) AS post_count, p.last_at AS last_post_at,
       greatest(t.created_at, p.last_at) AS last_activity_at, t.created_at
FROM forum_threads t
JOIN users u ON u.id = t.author_id
LEFT JOIN (SELECT thread_id, count(*) AS n, max(created_at) AS last_at FROM forum_posts GROUP BY thread_id) p
       ON p.thread_id = t.id;
CREATE UNIQUE INDEX mv_forum_threads_key ON mv_forum_threads (thread_id);
CREATE INDEX mv_forum_threads_chain_idx ON mv_forum_threads (chain_id, last_activity_at DESC, thread_id DESC);

-- Tags by the upvotes of the projects that carry them: the feed's "trending topics".
CREATE MATERIALIZED VIEW mv_trending_tags AS
SELECT tag, count(*) AS project_count, sum(upvote_count)::bigint AS upvotes,
       sum(trending_score) / count(*) AS mean_trending_score
FROM mv_feed_projects, unnest(tags) AS tag
GROUP BY tag;
CREATE UNIQUE INDEX mv_trending_tags_key ON mv_trending_tags (tag);

-- Search documents: projects, users and chains in one table, weighted full text; `words` feeds the
-- vocabulary below, which corrects typos by trigrams.
-- Popularity (upvotes) changes with every vote, so the search query reads it live for its top hits.
CREATE MATERIALIZED VIEW mv_search_documents AS
SELECT 'project'::text AS doc_type, p.id AS doc_id, p.title, p.tagline AS subtitle, NULL::text AS slug,
       setweight(to_tsvector('english', p.title), 'A')
           || setweight(to_tsvector('english', p.tagline), 'B')
           || setweight(to_tsvector('english', p.description), 'C')
           || setweight(to_tsvector('english', array_to_string(p.tags, ' ')), 'B') AS document,
       lower(p.title || ' ' || p.tagline) AS words
FROM projects p
UNION ALL
SELECT 'user', u.id, u.display_name, u.username, u.username,
       setweight(to_tsvector('english', u.username), 'A')
           || setweight(to_tsvector('english', u.display_name), 'A')
           || setweight(to_tsvector('english', u.bio), 'C'),
       lower(u.username || ' ' || u.display_name)
FROM users u
UNION ALL
SELECT 'chain', c.id, c.name, c.description, c.slug,
       setweight(to_tsvector('english', c.name), 'A') || setweight(to_tsvector('english', c.description), 'B'),
       lower(c.name || ' ' || c.slug)
FROM chains c;
CREATE UNIQUE INDEX mv_search_documents_key ON mv_search_documents (doc_type, doc_id);
CREATE INDEX mv_search_documents_fts_idx ON mv_search_documents USING gin (document);

-- The vocabulary of the search documents, for correcting a misspelled query word by trigrams.
CREATE MATERIALIZED VIEW mv_search_words AS
SELECT word, ndoc FROM ts_stat($q$SELECT to_tsvector('simple', words) FROM mv_search_documents$q$);
CREATE UNIQUE INDEX mv_search_words_key ON mv_search_words (word);
CREATE INDEX mv_search_words_trgm_idx ON mv_search_words USING gist (word gist_trgm_ops);

-- ---------------------------------------------------------------------------------------------
-- The refresh queue. Writers never touch its rows: each write statement on a table a view reads
-- appends one row to mv_refresh_requests (insert-only; it locks nothing shared), and the refresher
-- coalesces those into one queue row per view. A request rolls back with the write that made it,
-- so no view is marked for a change that never happened, and none is missed for one that did.
-- Upvotes and comments reach the views through mv_feed_projects: the fold requests for it.

CREATE TABLE mv_refresh_queue (
    view_name                text        PRIMARY KEY,
    status                   text        NOT NULL DEFAULT 'idle' CHECK (status IN ('idle', 'pending')),
    depends_on               text[]      NOT NULL,
    -- Bumped by every collection of requests; a refresh that started at generation g leaves the
    -- view pending when it ends at a later one (requests came in while it ran).
    generation               bigint      NOT NULL DEFAULT 0,
    refresh_requested_at     timestamptz,
    first_requested_at       timestamptz,
    last_refreshed_at        timestamptz,
    last_refresh_duration_ms integer,
    attempts                 integer     NOT NULL DEFAULT 0,
    next_attempt_at          timestamptz,
    last_error               text
);

-- A refresher holds a view's row here (FOR UPDATE SKIP LOCKED) for the length of its refresh, so
-- two replicas never refresh one view at once, and a crashed replica's claim ends with its session.
CREATE TABLE mv_refresh_claims (
    view_name text PRIMARY KEY REFERENCES mv_refresh_queue (view_name) ON DELETE CASCADE
);

CREATE TABLE mv_refresh_log (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    view_name          text        NOT NULL,
    refresh_started_at timestamptz NOT NULL,
    duration_ms        integer     NOT NULL,
    status             text        NOT NULL CHECK (status IN ('completed', 'failed')),
    error              text,
    worker             text,
    first_requested_at timestamptz
);
-- The refresher prunes the log by age.
CREATE INDEX mv_refresh_log_started_idx ON mv_refresh_log (refresh_started_at);

CREATE TABLE mv_refresh_requests (
    source_table text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER TABLE mv_refresh_requests SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                     autovacuum_vacuum_insert_scale_factor = 0,
                                     autovacuum_vacuum_insert_threshold = 5000);

INSERT INTO mv_refresh_queue (view_name, depends_on) VALUES
    ('mv_feed_projects', '{}'),
    ('mv_leaderboard_projects', '{mv_feed_projects}'),
    ('mv_leaderboard_users', '{mv_feed_projects,users}'),
    ('mv_chain_directory', '{chains,chain_projects,chain_members,forum_threads,users}'),
    ('mv_chain_projects', '{chain_projects,mv_feed_projects}'),
    ('mv_forum_threads', '{forum_threads,forum_posts,users}'),
    ('mv_trending_tags', '{mv_feed_projects}'),
    ('mv_search_documents', '{projects,users,chains}');
INSERT INTO mv_refresh_claims SELECT view_name FROM mv_refresh_queue;

CREATE FUNCTION mv_request_refresh() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The first request after the refresher drained the ledger wakes it (a hint: it also polls).
    IF NOT EXISTS (SELECT FROM mv_refresh_requests) THEN
        PERFORM pg_notify('mv_refresh', TG_TABLE_NAME);
    END IF;
    INSERT INTO mv_refresh_requests (source_table) VALUES (TG_TABLE_NAME);
    RETURN NULL;
END $$;

DO $do$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'projects', 'chains', 'chain_projects', 'chain_members', 'forum_threads',
                             'forum_posts']
    LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION mv_request_refresh()', 'trg_' || t || '_mv_request', t);
    END LOOP;
END $do$;

-- How old a view is: the instant before which every committed write is in it. The feed is as of
-- the last fold (the refresher folds every half second); an idle view is current, a pending one
-- is as of its first unserved request.
CREATE FUNCTION view_as_of(name text) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
RETURN (SELECT CASE WHEN q.view_name = 'mv_feed_projects' THEN coalesce(q.last_refreshed_at, now())
                    WHEN q.status = 'pending' THEN q.first_requested_at
                    ELSE now() END
        FROM mv_refresh_queue q WHERE q.view_name = name);

-- A rebuilt feed asks for the views that read it, as a fold does.
CREATE OR REPLACE FUNCTION rebuild_feed() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE mv_feed_projects;
    INSERT INTO mv_feed_projects SELECT * FROM mv_feed_projects_truth;
    INSERT INTO mv_refresh_requests (source_table) VALUES ('mv_feed_projects');
$$;

-- The fold asks for the views that read the feed whenever it changed feed rows.
CREATE OR REPLACE FUNCTION rm_projects_folded(ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    PERFORM feed_apply(ids);
    INSERT INTO mv_refresh_requests (source_table) VALUES ('mv_feed_projects');
END $$;

-- Coalesce the pending requests into the queue: one row per view, however many writes asked.
-- One collector at a time (so two replicas never lock queue rows in different orders).
CREATE FUNCTION mv_collect_requests() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    collected integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7305798357383151618) THEN
        RETURN 0;
    END IF;
    WITH moved AS (
        DELETE FROM mv_refresh_requests RETURNING source_table, requested_at
    ), per_view AS (
        SELECT q.view_name, min(m.requested_at) AS first_at, max(m.requested_at) AS last_at
        FROM mv_refresh_queue q JOIN moved m ON m.source_table = ANY (q.depends_on)
        GROUP BY q.view_name
    ), upd AS (
        UPDATE mv_refresh_queue q SET
            status = 'pending',
            generation = q.generation + 1,
            first_requested_at = coalesce(q.first_requested_at, v.first_at),
            refresh_requested_at = greatest(q.refresh_requested_at, v.last_at)
        FROM per_view v WHERE q.view_name = v.view_name
        RETURNING 1
    )
    SELECT count(*) INTO collected FROM moved;
    RETURN collected;
END $$;

-- TRUNCATE fires no row or statement triggers of the other kinds: rebuild the feed from what is left.
CREATE FUNCTION feed_source_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM rebuild_feed();
    RETURN NULL;
END $$;

DO $do$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'projects', 'project_upvotes', 'project_comments'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION feed_source_truncated()',
                       'trg_' || t || '_feed_truncate', t);
    END LOOP;
END $do$;
