-- mv_search_documents and mv_search_words: full-text, typo-tolerant search over projects, users and
-- chains; refreshed (seconds stale), the vocabulary together with the documents.
--
-- Search that stops early on a common word: ranking every full-text match of "redis" (about 35k
-- documents at `standard`) took 40 ms. The documents carry a popularity (upvotes for a project,
-- members for a chain, 0 for a user), and a btree walks each type in popularity order, so a common
-- word finds its 200 most popular matches after reading a few thousand rows. A rare word goes
-- through the GIN index, keyed by type as well (btree_gin), so a search within one type reads
-- only that type's matches. The live upvote count breaks ties in the final ranking.

CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gin;

-- The truth, from the source tables (and the exact project_counters); the view is its
-- materialization. `words` feeds the vocabulary below.
CREATE VIEW mv_search_documents_truth AS
SELECT 'project'::text AS doc_type, p.id AS doc_id, p.title, p.tagline AS subtitle, NULL::text AS slug,
       setweight(to_tsvector('english', p.title), 'A')
           || setweight(to_tsvector('english', p.tagline), 'B')
           || setweight(to_tsvector('english', p.description), 'C')
           || setweight(to_tsvector('english', array_to_string(p.tags, ' ')), 'B') AS document,
       lower(p.title || ' ' || p.tagline) AS words,
       coalesce(c.upvote_count, 0) AS popularity
FROM projects p
LEFT JOIN project_counters c ON c.project_id = p.id
UNION ALL
SELECT 'user', u.id, u.display_name, u.username, u.username,
       setweight(to_tsvector('english', u.username), 'A')
           || setweight(to_tsvector('english', u.display_name), 'A')
           || setweight(to_tsvector('english', u.bio), 'C'),
       lower(u.username || ' ' || u.display_name),
       0
FROM users u
UNION ALL
SELECT 'chain', c.id, c.name, c.description, c.slug,
       setweight(to_tsvector('english', c.name), 'A') || setweight(to_tsvector('english', c.description), 'B'),
       lower(c.name || ' ' || c.slug),
       coalesce((SELECT count(*) FROM chain_members m WHERE m.chain_id = c.id), 0)
FROM chains c;

CREATE MATERIALIZED VIEW mv_search_documents AS SELECT * FROM mv_search_documents_truth;
CREATE UNIQUE INDEX mv_search_documents_key ON mv_search_documents (doc_type, doc_id);
CREATE INDEX mv_search_documents_fts_idx ON mv_search_documents USING gin (doc_type, document);
CREATE INDEX mv_search_documents_popular_idx ON mv_search_documents (doc_type, popularity DESC, doc_id DESC);

SELECT refreshed_view('mv_search_documents', '{projects,users,chains}');

-- The vocabulary of the search documents, for correcting a misspelled query word by trigrams. A
-- word is corrected only to a word found in at least two documents: most of the vocabulary is
-- usernames, each in one document, and the nearest-trigram search over all 105k words took 6 ms
-- at `standard`; over the words in two documents or more, 0.1 ms.
-- The definition, once, over either the documents' truth or the documents just refreshed, which
-- the truth would recompute.
CREATE FUNCTION search_vocabulary(from_truth boolean) RETURNS TABLE (word text, ndoc integer)
LANGUAGE sql STABLE AS $$
    SELECT word, ndoc FROM ts_stat(format('SELECT to_tsvector(''simple'', words) FROM %I',
                                          CASE WHEN from_truth THEN 'mv_search_documents_truth'
                                               ELSE 'mv_search_documents' END))
$$;

CREATE VIEW mv_search_words_truth AS SELECT * FROM search_vocabulary(true);

CREATE MATERIALIZED VIEW mv_search_words AS SELECT * FROM search_vocabulary(false);
CREATE UNIQUE INDEX mv_search_words_key ON mv_search_words (word);
CREATE INDEX mv_search_words_trgm_idx ON mv_search_words USING gist (word gist_trgm_ops) WHERE ndoc >= 2;

-- Every match of a query within one type, through the GIN index only: the planner's estimate
-- of how often a word occurs within a type is poor (its statistics are for the whole view), and
-- a walk in popularity order for a word that is rare in that type reads the whole type.
CREATE FUNCTION search_type_matches(query tsquery, wanted text)
RETURNS SETOF mv_search_documents
LANGUAGE sql STABLE
SET enable_indexscan = off SET enable_seqscan = off
AS $$
    SELECT * FROM mv_search_documents d
    WHERE d.doc_type = wanted AND d.document @@ query
    ORDER BY d.popularity DESC, d.doc_id DESC
    LIMIT 200
$$;

-- The first 200 matches among a type's 5,000 most popular documents, walking the popularity index
-- in order: the only plan allowed, whatever the statistics say (a view just refreshed and not yet
-- analyzed looked empty to the planner, which then sorted the whole type: 170 ms).
CREATE FUNCTION search_type_walk(query tsquery, wanted text)
RETURNS SETOF mv_search_documents
LANGUAGE sql STABLE
SET enable_bitmapscan = off SET enable_seqscan = off SET enable_sort = off
AS $$
    SELECT * FROM (
        SELECT * FROM mv_search_documents d
        WHERE d.doc_type = wanted
        ORDER BY d.popularity DESC, d.doc_id DESC
        LIMIT 5000) p
    WHERE p.document @@ query
    LIMIT 200
$$;

-- A search's candidates: per type, the 200 most popular documents that match.
-- - A common word: walking the type's 5,000 most popular documents in order finds 200 matches,
--   and the walk stops at the 200th (1 ms for "redis" at `standard`, against 40 ms for ranking
--   every one of its 35k matches).
-- - Otherwise the word occurs in fewer than 4% of the popular head: every match of the type comes
--   through the GIN index, which is cheap for a word that rare.
CREATE FUNCTION search_candidates(query tsquery, wanted text)
RETURNS SETOF mv_search_documents
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t text;
    head mv_search_documents[];
BEGIN
    FOREACH t IN ARRAY ARRAY['project', 'user', 'chain'] LOOP
        CONTINUE WHEN wanted IS NOT NULL AND wanted <> t;
        SELECT array_agg(s) INTO head FROM search_type_walk(query, t) s;
        IF coalesce(cardinality(head), 0) >= 200 THEN
            RETURN QUERY SELECT * FROM unnest(head);
        ELSE
            RETURN QUERY SELECT * FROM search_type_matches(query, t);
        END IF;
    END LOOP;
END $$;

-- name: search
-- GET /api/search: full text over the search documents after correcting each query word to the
-- closest word of the documents' vocabulary (trigram distance, among words in two documents or
-- more), so "postgress" finds Postgres and "reddis" Redis. Candidates: per document type, the 200
-- most popular matches (search_candidates()). Among them, the 200 most relevant are ranked, with
-- the live upvote count breaking near-ties.
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
), hits AS (
    SELECT hit.doc_type, hit.doc_id, hit.title, hit.subtitle, hit.slug,
           (hit.relevance + ln(1 + coalesce(
               (SELECT c.upvote_count FROM project_counters_base c
                WHERE hit.doc_type = 'project' AND c.project_id = hit.doc_id), 0)) / 100)::float8 AS score
    FROM (
        -- The 200 most relevant candidates; popularity then breaks near-ties among them.
        SELECT c.doc_type, c.doc_id, c.title, c.subtitle, c.slug,
               ts_rank_cd(c.document, (SELECT plainto_tsquery('english', text) FROM corrected), 32) AS relevance
        FROM search_candidates((SELECT plainto_tsquery('english', text) FROM corrected), %(doc_type)s::text) c
        ORDER BY relevance DESC
        LIMIT 200
    ) hit
    ORDER BY score DESC, hit.doc_type, hit.doc_id
    LIMIT %(limit)s
)
-- One JSON document, as_of included even when nothing matched.
SELECT '{"query":' || json_str(%(q)s) || ',"corrected":' || json_str((SELECT text FROM corrected))
       || ',"items":[' || coalesce((
           SELECT string_agg('{"type":' || json_str(doc_type) || ',"id":' || doc_id || ',"title":' || json_str(title)
                             || ',"subtitle":' || json_str(subtitle) || ',"slug":' || json_str(slug)
                             || ',"score":' || score || '}', ',' ORDER BY score DESC, doc_type, doc_id)
           FROM hits), '')
       || '],"as_of":' || (SELECT json_ts(as_of) FROM read_model_freshness WHERE clock = 'mv_search_documents')
       || '}'
