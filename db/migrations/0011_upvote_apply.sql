-- The API's upvote in one round trip: the change, its commit and the count after it
-- (db/readmodels/upvote_sets.sql). The count no longer waits for the write-through, and the lock's
-- release no longer delays the answer.

CREATE PROCEDURE upvote_apply(u bigint, p bigint, want boolean, durable boolean,
                              INOUT present boolean DEFAULT NULL, INOUT upvoted boolean DEFAULT NULL,
                              INOUT changed boolean DEFAULT NULL, INOUT upvote_count bigint DEFAULT NULL,
                              INOUT change_id bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT s.present, s.upvoted, s.changed, s.upvote_count, s.change_id
    INTO present, upvoted, changed, upvote_count, change_id
    FROM upvote_set(u, p, want, durable) s;
    IF changed THEN
        COMMIT;
        SELECT c.upvote_count INTO upvote_count FROM project_counters c WHERE c.project_id = p;
    END IF;
END $$;
