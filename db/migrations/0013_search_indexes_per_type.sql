-- migrate:no-transaction
-- Search's rare-word indexes per type (db/readmodels/mv_search_documents.sql): the two GIN indexes
-- with the type as a btree_gin column become one partial index per type and tier (btree_gin goes
-- with them), and search_rare() names its type so that its plans use them; search_stream()'s walk
-- no longer hands a common word to the index after one short stretch without a match. Built
-- without blocking the fold's writes; the functions are replaced once the indexes exist.
CREATE INDEX CONCURRENTLY IF NOT EXISTS mv_search_documents_project_head_idx ON mv_search_documents USING gin (head)
    WITH (gin_pending_list_limit = 256) WHERE doc_type = 'project';
CREATE INDEX CONCURRENTLY IF NOT EXISTS mv_search_documents_chain_head_idx ON mv_search_documents USING gin (head)
    WITH (gin_pending_list_limit = 256) WHERE doc_type = 'chain';
CREATE INDEX CONCURRENTLY IF NOT EXISTS mv_search_documents_user_head_idx ON mv_search_documents USING gin (head)
    WITH (gin_pending_list_limit = 256) WHERE doc_type = 'user';
CREATE INDEX CONCURRENTLY IF NOT EXISTS mv_search_documents_project_fts_idx ON mv_search_documents USING gin (document)
    WITH (gin_pending_list_limit = 256) WHERE doc_type = 'project';
CREATE INDEX CONCURRENTLY IF NOT EXISTS mv_search_documents_chain_fts_idx ON mv_search_documents USING gin (document)
    WITH (gin_pending_list_limit = 256) WHERE doc_type = 'chain';
CREATE INDEX CONCURRENTLY IF NOT EXISTS mv_search_documents_user_fts_idx ON mv_search_documents USING gin (document)
    WITH (gin_pending_list_limit = 256) WHERE doc_type = 'user';
DROP INDEX CONCURRENTLY IF EXISTS mv_search_documents_head_idx;
DROP INDEX CONCURRENTLY IF EXISTS mv_search_documents_fts_idx;
DROP EXTENSION IF EXISTS btree_gin;  -- those two were its only use

CREATE OR REPLACE FUNCTION search_rare(q tsquery, wanted text, tier integer, after_popularity integer, after_id bigint,
                            n integer, above integer)
RETURNS TABLE (doc_id bigint, popularity integer)
LANGUAGE plpgsql STABLE
SET enable_indexscan = off SET enable_seqscan = off SET enable_indexonlyscan = off
AS $$
BEGIN
    IF wanted = 'project' THEN
        RETURN QUERY
        SELECT d.doc_id, d.popularity FROM mv_search_documents d
        WHERE d.doc_type = 'project' AND tier = 2 AND d.head @@ q
          AND (d.popularity, d.doc_id) < (after_popularity, after_id) AND d.popularity > above
        UNION ALL
        SELECT d.doc_id, d.popularity FROM mv_search_documents d
        WHERE d.doc_type = 'project' AND tier = 1 AND d.document @@ q AND NOT d.head @@ q
          AND (d.popularity, d.doc_id) < (after_popularity, after_id) AND d.popularity > above
        ORDER BY 2 DESC, 1 DESC LIMIT n;
    ELSIF wanted = 'chain' THEN
        RETURN QUERY
        SELECT d.doc_id, d.popularity FROM mv_search_documents d
        WHERE d.doc_type = 'chain' AND tier = 2 AND d.head @@ q
          AND (d.popularity, d.doc_id) < (after_popularity, after_id) AND d.popularity > above
        UNION ALL
        SELECT d.doc_id, d.popularity FROM mv_search_documents d
        WHERE d.doc_type = 'chain' AND tier = 1 AND d.document @@ q AND NOT d.head @@ q
          AND (d.popularity, d.doc_id) < (after_popularity, after_id) AND d.popularity > above
        ORDER BY 2 DESC, 1 DESC LIMIT n;
    ELSIF wanted = 'user' THEN
        RETURN QUERY
        SELECT d.doc_id, d.popularity FROM mv_search_documents d
        WHERE d.doc_type = 'user' AND tier = 2 AND d.head @@ q
          AND (d.popularity, d.doc_id) < (after_popularity, after_id) AND d.popularity > above
        UNION ALL
        SELECT d.doc_id, d.popularity FROM mv_search_documents d
        WHERE d.doc_type = 'user' AND tier = 1 AND d.document @@ q AND NOT d.head @@ q
          AND (d.popularity, d.doc_id) < (after_popularity, after_id) AND d.popularity > above
        ORDER BY 2 DESC, 1 DESC LIMIT n;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION search_stream(q tsquery, wanted text, tier integer, after_popularity integer, after_id bigint,
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
        -- A stretch with no match hands the rest to the GIN index only if it was as long as the walk
        -- before it; a shorter one can miss by chance (the last match of a page, at a share of
        -- 1 in 20, is not in 40 entries one time in eight), and the index would read every match
        -- of a common word ("postgres": 9,800 at `standard`, 30 ms). So the next stretch doubles.
        EXIT WHEN cardinality(hit_ids) = 0 AND 2 * walked >= total;
        chunk := CASE WHEN cardinality(hit_ids) = 0 THEN 2 * walked
                      ELSE least(ceil(2.0 * (n - cardinality(ids)) * total / cardinality(ids)), 2 * total) END;
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(ids, pops)
                 UNION ALL
                 SELECT * FROM search_rare(q, wanted, tier, ap, ai, n - cardinality(ids), above);
END $$;
