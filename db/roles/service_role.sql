-- A login role for a service that reads and writes the data but cannot change the schema: the API
-- connects as one, the refresher and the reconciler as another, made with -v maintains=on
-- (docs/deploy.md, "Roles"). Run it as the schema's owner after the migrations, once per role,
-- with psql:
--
--     psql "$OWNER_URL" -v role=denorm_api -f db/roles/service_role.sql
--     psql "$OWNER_URL" -v role=denorm_maintainer -v maintains=on -f db/roles/service_role.sql
--     psql "$OWNER_URL" -c "ALTER ROLE denorm_api PASSWORD '...'"
--
-- The rights: every row of every table and view (the statement triggers write the ledgers in the
-- writer's own transaction, as the writer), the sequences, and the functions; never CREATE in the
-- schema, never ownership, so no ALTER, DROP, TRUNCATE or REFRESH. A maintainer also refreshes the
-- materialized views, through the owner's refresh_materialized_view(); the API's role may not. The
-- default privileges give the same rights on what later migrations create (they run as the owner:
-- the migration Job).

SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"role";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"role";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"role";
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO :"role";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"role";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO :"role";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO :"role";
\if :{?maintains}
GRANT EXECUTE ON FUNCTION refresh_materialized_view(text) TO :"role";
\else
REVOKE EXECUTE ON FUNCTION refresh_materialized_view(text) FROM :"role";
-- The API's session settings (denorm/pg.py OLTP_SETTINGS), on the role too: the API sends them as
-- connection options, which a PgBouncer drops (ignore_startup_parameters = options); the server
-- then applies these to every session of the role, pooled or not (docs/deploy.md, "A pooler").
ALTER ROLE :"role" SET jit = off;
ALTER ROLE :"role" SET plan_cache_mode = force_generic_plan;
ALTER ROLE :"role" SET max_parallel_workers_per_gather = 0;
ALTER ROLE :"role" SET "TimeZone" = 'UTC';
ALTER ROLE :"role" SET enable_seqscan = off;
\endif
