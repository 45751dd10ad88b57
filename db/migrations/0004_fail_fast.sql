-- At most one pending intro request per requester, target and project: a duplicate is refused with
-- a 409 by the database itself (issue 16). Duplicates already pending are settled first: the newest
-- stays pending, the older ones are declined.
UPDATE intro_requests i SET status = 'declined', responded_at = now()
WHERE i.status = 'pending'
  AND EXISTS (SELECT 1 FROM intro_requests j
              WHERE j.status = 'pending' AND j.requester_id = i.requester_id AND j.target_id = i.target_id
                AND j.project_id IS NOT DISTINCT FROM i.project_id AND j.id > i.id);

-- At most one pending request per requester, target and project: a duplicate is refused (409).
CREATE UNIQUE INDEX intro_requests_one_pending_idx ON intro_requests (requester_id, target_id, coalesce(project_id, 0))
    WHERE status = 'pending';
