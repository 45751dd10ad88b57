-- view_as_of() as a view, for the API's reads. Each read asked view_as_of() once (an InitPlan),
-- and a PL/pgSQL call runs its query through SPI: a second executor per read. A view is expanded
-- into the read's own plan: one more index probe, no function call. The function had no other
-- caller, so the rule now lives here only.
CREATE VIEW view_freshness AS
SELECT q.view_name,
       CASE WHEN q.view_name = 'mv_feed_projects' THEN coalesce(q.last_refreshed_at, now())
            WHEN q.status = 'pending' THEN q.first_requested_at
            ELSE now() END AS as_of
FROM mv_refresh_queue q;

DROP FUNCTION view_as_of(text);
