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
-- The rare words' matches: an index per type and tier, partial on the type. (One index per tier
-- with the type as a btree_gin column made every search intersect the type's posting list, every
-- document of the type, with its words': 4 of a 6 ms search at `standard`.) A search reads an
-- index's whole pending list (new entries not yet merged), so it is kept short: 256 kB, not 4 MB
-- (2 MB of pending entries doubled a search's cost at `standard`).
CREATE INDEX mv_search_documents_project_head_idx ON mv_search_documents USING gin (head)
    WITH (gin_pending_list_limit = 256) WHERE doc_type = 'project';
CREATE INDEX mv_search_documents_chain_head_idx ON mv_search_documents USING gin (head)
    WITH (gin_pending_list_limit = 256) WHERE doc_type = 'chain';
CREATE INDEX mv_search_documents_user_head_idx ON mv_search_documents USING gin (head)
    WITH (gin_pending_list_limit = 256) WHERE doc_type = 'user';
CREATE INDEX mv_search_documents_project_fts_idx ON mv_search_documents USING gin (document)
    WITH (gin_pending_list_limit = 256) WHERE doc_type = 'project';
CREATE INDEX mv_search_documents_chain_fts_idx ON mv_search_documents USING gin (document)
    WITH (gin_pending_list_limit = 256) WHERE doc_type = 'chain';
CREATE INDEX mv_search_documents_user_fts_idx ON mv_search_documents USING gin (document)
    WITH (gin_pending_list_limit = 256) WHERE doc_type = 'user';
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
-- than `above`, through the type's GIN index of the tier: every match is read and sorted, which is
-- cheap for a rare word only. A statement per type names its type, so that its plan (made once per
-- session) can use the type's partial index; the tier's condition on a parameter leaves the other
-- tier's half unread. The only plan allowed: a generic plan would rather walk the popularity index,
-- which for a rare word reads the whole type.
CREATE FUNCTION search_rare(q tsquery, wanted text, tier integer, after_popularity integer, after_id bigint,
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

-- name: search
-- GET /api/search: full text over the search documents after correcting each query word to the
-- closest word of the documents' vocabulary (trigram distance, among words in two documents or
-- more), so "postgress" finds Postgres and "reddis" Redis. A page in the order of search_page();
-- score is the tier plus the popularity / 100. next_cursor: the query string that continues after
-- the last item of a full page.
WITH tokens AS (
    SELECT t, ord FROM regexp_split_to_table(lower(%(q)s), '[^[:alnum:]]+') WITH ORDINALITY AS x(t, ord)
    WHERE t <> ''
    LIMIT 8
), fixed AS (
    SELECT ord, coalesce(
        (SELECT w.word FROM mv_search_words w WHERE w.word = tokens.t),
        (SELECT w.word FROM mv_search_words w WHERE w.ndoc >= 2 AND w.word %% tokens.t
         ORDER BY w.word <-> tokens.t LIMIT 1),
        tokens.t) AS word
    FROM tokens
), corrected AS MATERIALIZED (
    SELECT string_agg(word, ' ' ORDER BY ord) AS text FROM fixed
), hits AS MATERIALIZED (
    SELECT p.ord, p.tier, p.popularity, p.doc_type, p.doc_id, d.title, d.subtitle, d.slug
    FROM search_page((SELECT plainto_tsquery('english', text) FROM corrected), %(doc_type)s::text,
                     %(after_tier)s::int, %(after_popularity)s::int, %(after_type)s::text, %(after_id)s::bigint,
                     %(limit)s::int) WITH ORDINALITY AS p(tier, popularity, doc_type, doc_id, ord)
    JOIN mv_search_documents d ON d.doc_id = p.doc_id AND d.doc_type = p.doc_type
)
-- One JSON document, as_of included even when nothing matched.
SELECT '{"query":' || json_str(%(q)s) || ',"corrected":' || json_str((SELECT text FROM corrected))
       || ',"items":[' || coalesce(string_agg(
              '{"type":' || json_str(doc_type) || ',"id":' || doc_id || ',"title":' || json_str(title)
              || ',"subtitle":' || json_str(subtitle) || ',"slug":' || json_str(slug)
              || ',"score":' || round(tier + popularity / 100.0, 2) || '}', ',' ORDER BY ord), '')
       || '],"next_cursor":' || CASE WHEN count(*) = %(limit)s
              THEN '"after_tier=' || (array_agg(tier ORDER BY ord))[count(*)]
                   || '&after_popularity=' || (array_agg(popularity ORDER BY ord))[count(*)]
                   || '&after_type=' || (array_agg(doc_type ORDER BY ord))[count(*)]
                   || '&after_id=' || (array_agg(doc_id ORDER BY ord))[count(*)] || '"'
              ELSE 'null' END
       || ',"as_of":' || (SELECT json_ts(as_of) FROM read_model_freshness WHERE clock = 'fold')
       || '}'
FROM hits
