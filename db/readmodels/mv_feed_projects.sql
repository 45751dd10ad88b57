-- mv_feed_projects: one row per project, in the order of each of the feed's sorts; as of the fold.
--
-- A table the fold keeps (db/schema/ledgers.sql), row by row, for the projects whose counters it
-- folds, so its cost follows the changes, not the dataset. The counts a page shows are read live
-- from project_counters, so they are exact; the order and the scores are as of the fold.

-- ---------------------------------------------------------------------------------------------
-- Scores. Both depend only on counts and the creation time, never on now(): a ranking built today
-- is still right tomorrow, so no work is needed just because time passed.

-- Reddit's "hot": each tenfold of upvotes is worth 12.5 hours of recency (45000 s per log10 unit).
CREATE FUNCTION trending_score(upvotes bigint, created_at timestamptz) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN log(greatest(upvotes, 1)::float8) + (date_part('epoch', created_at) - 1134028003) / 45000.0;

-- The lower bound of the 95% Wilson score interval for the share of approving engagements, where
-- an engagement is an upvote (approving) or a comment (the only other signal the product records).
-- A project with 3 upvotes does not outrank one with 300 upvotes and 10 comments. A count below
-- zero (a corrupted counter, until the reconciler repairs it) scores as zero, so that the fold of
-- the other projects goes on.
CREATE FUNCTION proof_score(upvotes bigint, comments bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN greatest(upvotes, 0) + greatest(comments, 0) = 0 THEN 0 ELSE (
    (greatest(upvotes, 0)::float8 / (greatest(upvotes, 0) + greatest(comments, 0))
     + 1.9208 / (greatest(upvotes, 0) + greatest(comments, 0))
     - 1.96 * sqrt((greatest(upvotes, 0)::float8 / (greatest(upvotes, 0) + greatest(comments, 0)))
                   * (greatest(comments, 0)::float8 / (greatest(upvotes, 0) + greatest(comments, 0)))
                   / (greatest(upvotes, 0) + greatest(comments, 0))
                   + 0.9604 / ((greatest(upvotes, 0) + greatest(comments, 0))::float8 ^ 2)))
    / (1 + 3.8416 / (greatest(upvotes, 0) + greatest(comments, 0)))) END;

-- ---------------------------------------------------------------------------------------------
-- The table.

-- A feed item's JSON, open at the end: the read appends the live counts and the scores, then '}'
-- (db/schema/items.sql). A generated column needs an IMMUTABLE function: this one is, in effect
-- (its text depends on its arguments only: timestamps are rendered in UTC explicitly), and
-- PL/pgSQL so that no planner inlines the STABLE calls inside it.
CREATE FUNCTION feed_item_head(id bigint, owner_id bigint, username text, title text, tagline text, tags text[],
                               created_at timestamptz) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN '{"id":' || id || ',"owner_id":' || owner_id || ',"username":' || json_str(username)
        || ',"title":' || json_str(title) || ',"tagline":' || json_str(tagline)
        || ',"tags":' || coalesce(to_json(tags)::text, '[]') || ',"created_at":' || json_ts(created_at);
END $$;

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
    created_at     timestamptz NOT NULL,
    -- A generated column, so every writer of a feed row (the fold, the rebuild, a repair) keeps it right.
    item_head      text        NOT NULL
        GENERATED ALWAYS AS (feed_item_head(id, owner_id, username, title, tagline, tags, created_at)) STORED
);
-- Keyset pages for the three sorts: (key, id), so that ties still have one order; the upvote order
-- is the projects leaderboard's.
CREATE INDEX mv_feed_projects_trending_idx ON mv_feed_projects (trending_score DESC, id DESC);
CREATE INDEX mv_feed_projects_proof_idx ON mv_feed_projects (proof_score DESC, id DESC);
CREATE INDEX mv_feed_projects_newest_idx ON mv_feed_projects (created_at DESC, id DESC);
CREATE INDEX mv_feed_projects_upvotes_idx ON mv_feed_projects (upvote_count DESC, id DESC);

-- The truth, from the source tables alone: what the table holds once every delta is folded. A
-- filter on id reaches the scan of projects.
CREATE VIEW mv_feed_projects_truth AS
SELECT p.id, p.owner_id, u.username, p.title, p.tagline, p.tags, c.upvote_count, c.comment_count,
       trending_score(c.upvote_count, p.created_at) AS trending_score,
       proof_score(c.upvote_count, c.comment_count) AS proof_score,
       p.created_at,
       feed_item_head(p.id, p.owner_id, u.username, p.title, p.tagline, p.tags, p.created_at) AS item_head
FROM projects p
JOIN users u ON u.id = p.owner_id
JOIN project_counters_truth c ON c.project_id = p.id;

-- The projects whose rows wait for the next fold (the reconciler leaves them out).
CREATE VIEW mv_feed_projects_pending AS SELECT DISTINCT project_id AS id FROM project_counter_deltas;

-- ---------------------------------------------------------------------------------------------
-- Maintenance.

-- The feed rows of these projects (the fold's step, and the reconciler's repair under the fold's
-- lock): brought up to date, upserting the ones that exist and dropping the rest, with the exact
-- counts; then ask for a refresh of the views that read the feed.
CREATE FUNCTION feed_apply(ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;
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
    INSERT INTO mv_feed_projects AS f (id, owner_id, username, title, tagline, tags, upvote_count, comment_count,
                                       trending_score, proof_score, created_at)
    SELECT * FROM fresh
    ON CONFLICT (id) DO UPDATE SET
        owner_id = excluded.owner_id, username = excluded.username, title = excluded.title,
        tagline = excluded.tagline, tags = excluded.tags, upvote_count = excluded.upvote_count,
        comment_count = excluded.comment_count, trending_score = excluded.trending_score,
        proof_score = excluded.proof_score, created_at = excluded.created_at;
    INSERT INTO mv_refresh_requests (source_table) VALUES ('mv_feed_projects');
END $$;

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

CREATE FUNCTION feed_rebuild() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE mv_feed_projects;
    INSERT INTO mv_feed_projects (id, owner_id, username, title, tagline, tags, upvote_count, comment_count,
                                  trending_score, proof_score, created_at)
    SELECT id, owner_id, username, title, tagline, tags, upvote_count, comment_count, trending_score, proof_score,
           created_at
    FROM mv_feed_projects_truth;
    INSERT INTO mv_refresh_requests (source_table) VALUES ('mv_feed_projects');
$$;

-- The projects the fold touches are marked in project_counters' ledger: every statement on
-- projects, upvotes and comments marks its projects there (project_counters.sql). A renamed user
-- changes the username shown on each of their projects: mark those too.
SELECT ledger_triggers('users', 'mv_feed_projects', $body$
    INSERT INTO project_counter_deltas (project_id)
    SELECT p.id FROM projects p
    WHERE p.owner_id IN (SELECT id FROM {changes} c GROUP BY id HAVING count(DISTINCT username) > 1);
$body$, events => '{update}', rebuild => 'feed_rebuild');
SELECT rebuild_on_truncate('projects', 'mv_feed_projects', 'feed_rebuild');
SELECT rebuild_on_truncate('project_upvotes', 'mv_feed_projects', 'feed_rebuild');
SELECT rebuild_on_truncate('project_comments', 'mv_feed_projects', 'feed_rebuild');

-- ---------------------------------------------------------------------------------------------
-- Reads.

-- name: feed_page
-- GET /api/projects: a page in the order of one sort, after the keyset cursor (key, id) of the
-- previous page (or at an offset, for page numbers). {key} is the sort's column, from the feed's
-- table of sorts (services/api/routes/projects.py FEED_SORTS), never from the request: the API
-- prepares one statement per sort. as_of: the order reflects every write committed before it;
-- the counts come from the zero-staleness counters.
-- One row: the whole page as JSON (each item its prebuilt head plus the live counts), and the
-- items' ids in order. Each item ends in "user_has_upvoted":null, which the API replaces for a
-- signed-in caller (the marker cannot occur inside a JSON string: there every quote is escaped).
-- next_cursor is the last item's (key, id), as page_cursor() encodes it, of the sort's kind. The aggregates take the
-- rows in the order the subquery gives them (a plain aggregate reads its input in order, and the
-- subquery's ORDER BY stays: its LIMIT needs it); an ORDER BY inside each aggregate would sort the
-- page three more times (0.013 of 0.09 ms). tests/test_api.py checks that cursor pages follow on
-- and equal offset pages.
SELECT '{"items":[' || coalesce(string_agg(
           f.item_head || ',"upvote_count":' || f.upvote_count || ',"comment_count":' || f.comment_count
           || ',"trending_score":' || f.trending_score || ',"proof_score":' || f.proof_score
           || ',"user_has_upvoted":null}', ','), '')
       || '],"as_of":' || (SELECT json_ts(as_of) FROM read_model_freshness WHERE clock = 'fold')
       || ',"sort":' || json_str(%(sort)s::text) || ',"page":' || coalesce(%(page)s::int::text, 'null')
       || ',"next_cursor":' || CASE WHEN count(*) = %(limit)s
              THEN page_cursor(%(sort)s::text, to_json((array_agg(f.key))[count(*)])::text
                                               || ',' || (array_agg(f.id))[count(*)])
              ELSE 'null' END
       || '}',
       string_agg(f.id::text, ',')
FROM (SELECT f.id, f.item_head, f.trending_score, f.proof_score, f.{key} AS key, c.upvote_count, c.comment_count
      FROM mv_feed_projects f
      JOIN project_counters c ON c.project_id = f.id
      WHERE (f.{key}, f.id) < (%(after_key)s, %(after_id)s::bigint)
      ORDER BY f.{key} DESC, f.id DESC
      LIMIT %(limit)s OFFSET %(offset)s) f
