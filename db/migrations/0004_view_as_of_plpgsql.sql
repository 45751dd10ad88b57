-- view_as_of() as PL/pgSQL. Every read of a refreshed view calls it once per query (an InitPlan),
-- and as a SQL function with a subquery it could not be inlined, so Postgres planned its body again
-- on every call: 0.09 ms of a 0.24 ms chain-directory query. PL/pgSQL keeps the plan of its query
-- for the life of the session: 0.01 ms.
CREATE OR REPLACE FUNCTION view_as_of(name text) RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN (SELECT CASE WHEN q.view_name = 'mv_feed_projects' THEN coalesce(q.last_refreshed_at, now())
                        WHEN q.status = 'pending' THEN q.first_requested_at
                        ELSE now() END
            FROM mv_refresh_queue q WHERE q.view_name = name);
END $$;
