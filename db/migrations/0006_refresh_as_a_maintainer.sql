-- The refresher and the reconciler may connect as a role that does not own the schema (issue 16):
-- they refresh the materialized views through this function of the owner's.

-- A refresh for a role that is not the views' owner: PostgreSQL 15 lets only a materialized
-- view's owner refresh it (17's MAINTAIN privilege would do). The owner's function, for this
-- schema's materialized views only, and executable only by the roles granted it (the refresher's
-- and the reconciler's: db/roles/service_role.sql with -v maintains=on), not by PUBLIC.
CREATE FUNCTION refresh_materialized_view(view_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_matviews m WHERE m.schemaname = 'public' AND m.matviewname = view_name) THEN
        RAISE EXCEPTION 'no materialized view %', view_name USING ERRCODE = 'undefined_table';
    END IF;
    EXECUTE format('REFRESH MATERIALIZED VIEW CONCURRENTLY public.%I', view_name);
END $$;
REVOKE EXECUTE ON FUNCTION refresh_materialized_view(text) FROM PUBLIC;
