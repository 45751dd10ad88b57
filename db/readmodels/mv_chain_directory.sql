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

-- name: chains
-- GET /api/chains: the directory, largest first. next_cursor: the query string that continues
-- after the last item of a full page. The aggregates take the rows in the subquery's order (see
-- the feed's query).
SELECT '{"items":[' || coalesce(string_agg(d.item, ','), '')
       || '],"next_cursor":' || CASE WHEN count(*) = %(limit)s
              THEN '"after_members=' || (array_agg(d.member_count))[count(*)]
                   || '&after_id=' || (array_agg(d.chain_id))[count(*)] || '"'
              ELSE 'null' END
       || ',"as_of":' || (SELECT json_ts(as_of) FROM read_model_freshness WHERE clock = 'fold') || '}'
FROM (SELECT chain_id, member_count, item
      FROM mv_chain_directory
      WHERE (member_count, chain_id) < (%(after_members)s::bigint, %(after_id)s::bigint)
      ORDER BY member_count DESC, chain_id DESC
      LIMIT %(limit)s) d

-- name: chain_page
-- GET /api/chains/{slug}: one chain, the first page of its projects (counts exact) and of its threads,
-- each with the cursor that continues it (GET /api/chains/{slug}/projects and /threads), as one JSON
-- document (text: the API sends it as it is). It reads three read models (this one,
-- mv_chain_projects and mv_forum_threads), all as of the fold.
SELECT '{"chain":' || d.item || ',"projects":' || pp.items || ',"projects_next_cursor":' || pp.next_cursor
       || ',"threads":' || tp.items || ',"threads_next_cursor":' || tp.next_cursor
       || ',"as_of":' || (SELECT json_ts(as_of) FROM read_model_freshness WHERE clock = 'fold') || '}'
FROM mv_chain_directory d
CROSS JOIN LATERAL chain_projects_page(d.chain_id, 9223372036854775807, 9223372036854775807, %(limit)s::int) pp
CROSS JOIN LATERAL chain_threads_page(d.chain_id, 'infinity', 9223372036854775807, %(limit)s::int) tp
WHERE d.slug = %(slug)s
LIMIT 1
