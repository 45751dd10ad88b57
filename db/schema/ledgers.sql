-- Delta ledgers and the fold: how a read model follows its source tables at the cost of the change.
--
-- A ledger-kept read model (docs/read-models.md) is a *base* table plus an append-only *delta
-- ledger*. Statement-level triggers with transition tables turn each source statement into a few
-- aggregated delta rows (one per touched key), so writers never update, and never lock, a shared
-- counter row: a viral project or a much-messaged user costs the same as any other. The model's
-- view adds the pending deltas to the base, so every read is exact at every commit.
--
-- The fold (denorm/maintenance.py, run by the refresher) moves deltas into the base tables, one
-- step per read model in the registry's order (denorm/readmodels.py), all in one transaction. It
-- never waits for a row lock (SKIP LOCKED), so it cannot deadlock with writers. The fold-kept
-- read models (the feed, each chain's projects) are brought up to date by the same transaction
-- for the projects it touched.

-- ---------------------------------------------------------------------------------------------
-- The triggers of the read models on one source table. Each read model writes its part once, in
-- its own file, as one statement body against {changes}: the statement's rows, each with a sign
-- (-1 for an old row, +1 for a new one). ledger_triggers() records the body and rebuilds the
-- source's trigger functions, one per event (INSERT, DELETE, UPDATE), each running every read
-- model's body in the order the files recorded them and reading its transition tables directly.
-- So a statement costs one trigger call and a few aggregated inserts, however many rows it
-- touched and however many read models follow its table (two calls instead of one cost an upvote
-- toggle 8-10% of its throughput: docs/read-models.md). With `rebuild`, a TRUNCATE of the source
-- (which fires no other trigger) calls that function to rebuild the read model from what is left.
--
-- The functions and triggers are named ledgers_on_<source>_<event> and trg_<source>_ledgers_<event>.
CREATE TABLE ledger_trigger_bodies (
    source   text    NOT NULL,
    event    text    NOT NULL CHECK (event IN ('insert', 'delete', 'update')),
    model    text    NOT NULL,
    body     text    NOT NULL,
    position integer GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (source, event, model)
);

CREATE FUNCTION ledger_triggers(source regclass, model text, body text,
                                events text[] DEFAULT '{insert,delete,update}', rebuild text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    ev text;
BEGIN
    FOREACH ev IN ARRAY events LOOP
        INSERT INTO ledger_trigger_bodies (source, event, model, body) VALUES (source::text, ev, model, body)
        ON CONFLICT ON CONSTRAINT ledger_trigger_bodies_pkey DO UPDATE SET body = excluded.body;
    END LOOP;
    PERFORM ledger_triggers_install(source);
    IF rebuild IS NOT NULL THEN
        PERFORM rebuild_on_truncate(source, model, rebuild);
    END IF;
END $$;

-- (Re)create the source's trigger functions and triggers from the bodies recorded for it.
CREATE FUNCTION ledger_triggers_install(source regclass) RETURNS void
LANGUAGE plpgsql AS $install$
DECLARE
    t text := source::text;
    ev text;
    src text;
    guard text;
    bodies text;
BEGIN
    FOREACH ev IN ARRAY ARRAY['insert', 'delete', 'update'] LOOP
        IF ev = 'insert' THEN
            src := '(SELECT 1 AS sign, n.* FROM new_rows n)';
            guard := 'IF NOT EXISTS (SELECT FROM new_rows) THEN RETURN NULL; END IF;';
        ELSIF ev = 'delete' THEN
            src := '(SELECT -1 AS sign, o.* FROM old_rows o)';
            guard := 'IF NOT EXISTS (SELECT FROM old_rows) THEN RETURN NULL; END IF;';
        ELSE
            src := '(SELECT -1 AS sign, o.* FROM old_rows o UNION ALL SELECT 1 AS sign, n.* FROM new_rows n)';
            guard := '';
        END IF;
        SELECT string_agg(format(E'-- %s\n%s', b.model, replace(b.body, '{changes}', src)), E'\n'
                          ORDER BY b.position)
        INTO bodies
        FROM ledger_trigger_bodies b WHERE b.source = t AND b.event = ev;
        CONTINUE WHEN bodies IS NULL;
        EXECUTE format($f$
            CREATE OR REPLACE FUNCTION %1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
            BEGIN
                %2$s
                %3$s
                RETURN NULL;
            END $body$ $f$, format('ledgers_on_%s_%s', t, ev), guard, bodies);
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER %s ON %s REFERENCING %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION %I()',
                       format('trg_%s_ledgers_%s', t, ev), upper(ev), source,
                       CASE ev WHEN 'insert' THEN 'NEW TABLE AS new_rows'
                                  WHEN 'delete' THEN 'OLD TABLE AS old_rows'
                                  ELSE 'OLD TABLE AS old_rows NEW TABLE AS new_rows' END,
                       format('ledgers_on_%s_%s', t, ev));
    END LOOP;
END $install$;

-- TRUNCATE fires no row or statement triggers of the other kinds: the read model is rebuilt from
-- what is left by its own rebuild function, named in the trigger's argument.
CREATE FUNCTION rebuild_after_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('SELECT %I()', TG_ARGV[0]);
    RETURN NULL;
END $$;

CREATE FUNCTION rebuild_on_truncate(source regclass, model text, rebuild text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION rebuild_after_truncate(%L)',
                   format('trg_%s_%s_truncate', source::text, model), source, rebuild);
END $$;

-- ---------------------------------------------------------------------------------------------
-- The fold. Each read model kept by it has one step, a SQL function in its file that the fold calls
-- in the registry's order (denorm/readmodels.py), all in one transaction:
--
--     step(max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
--     RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
--                    touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
--
-- A step moves the deltas of at most max_keys keys of its own ledger (if it has one), and brings
-- its rows up to date for the projects, users and chains the steps before it touched; it returns
-- the keys it touched in turn (the ones it folded, and the ones it found gone). So the feed
-- follows the projects the counters' step folded, and the search documents the projects and the
-- chains whose counts moved.
--
-- The fold's clock: every write committed before as_of is in the fold-kept read models. At the end
-- of a fold it becomes the fold's transaction start (now(): every write committed before it was
-- visible to the fold's snapshots), or the creation of the oldest delta the fold left for later
-- (a key locked by a writer, a batch past max_keys) in any ledger a fold-kept read model follows:
-- a delta is created at its transaction's start, before its commit. It starts at the schema's
-- creation (nothing was written before it), so a database that is written to but never folded
-- shows its staleness growing.

CREATE TABLE fold_state (
    id          boolean     PRIMARY KEY DEFAULT true CHECK (id),
    as_of       timestamptz NOT NULL DEFAULT now(),
    folded_at   timestamptz,
    duration_ms integer
);
INSERT INTO fold_state DEFAULT VALUES;

-- Every table the fold reads or writes, locked at its start without waiting. A fold that cannot have
-- them all at once (a TRUNCATE rebuilding its read models holds one, or a migration) gives way at
-- once and the next one tries again. Once it has them it never waits for a table lock, so it can
-- form no deadlock with the rebuild a TRUNCATE's triggers run, whatever order those take their
-- locks in. The sources in ROW SHARE (the fold reads them, some FOR UPDATE SKIP LOCKED), its own
-- tables in ROW EXCLUSIVE: neither mode stands in a writer's way. tests/test_read_models.py holds
-- the list to what a fold locks.
CREATE FUNCTION fold_lock_tables() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE users, projects, project_upvotes, project_comments, chains, chain_projects, chain_members,
               forum_threads, forum_posts, messages
        IN ROW SHARE MODE NOWAIT;
    LOCK TABLE fold_state, project_counter_deltas, project_counters_base, project_upvote_moves,
               user_stat_deltas, user_stats_base, conversation_deltas, conversation_base,
               chain_stat_deltas, mv_chain_directory, forum_thread_deltas, mv_forum_threads,
               mv_feed_projects, mv_chain_projects, mv_leaderboard_users, search_document_changes,
               mv_search_documents, mv_search_words, mv_refresh_requests
        IN ROW EXCLUSIVE MODE NOWAIT;
    RETURN true;
END $$;

-- name: fold_begin
-- One folder at a time: a second caller gets false at once and folds nothing. Then every table it
-- uses, without waiting (fold_lock_tables: LockNotAvailable, and this fold gives way). Row locks
-- are never waited for (SKIP LOCKED).
SELECT CASE WHEN pg_try_advisory_xact_lock(7305798357383151617) THEN fold_lock_tables() ELSE false END,
       set_config('lock_timeout', '2s', true)

-- name: fold_lock
-- The fold's lock, waited for: a repair of a fold-kept read model writes it as the fold would.
SELECT pg_advisory_xact_lock(7305798357383151617)

-- name: fold_state
SELECT as_of, folded_at, duration_ms FROM fold_state
