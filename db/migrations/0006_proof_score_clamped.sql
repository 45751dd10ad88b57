-- proof_score() of a corrupted (negative) counter: the reconciler's tests edit counters by hand, and
-- a negative count took sqrt() of a negative number, which failed the fold of every project in the
-- same batch until the counter was repaired. A count below zero now scores as zero: the fold goes
-- on, and the reconciler repairs the counter.
CREATE OR REPLACE FUNCTION proof_score(upvotes bigint, comments bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN greatest(upvotes, 0) + greatest(comments, 0) = 0 THEN 0 ELSE (
    (greatest(upvotes, 0)::float8 / (greatest(upvotes, 0) + greatest(comments, 0))
     + 1.9208 / (greatest(upvotes, 0) + greatest(comments, 0))
     - 1.96 * sqrt((greatest(upvotes, 0)::float8 / (greatest(upvotes, 0) + greatest(comments, 0)))
                   * (greatest(comments, 0)::float8 / (greatest(upvotes, 0) + greatest(comments, 0)))
                   / (greatest(upvotes, 0) + greatest(comments, 0))
                   + 0.9604 / ((greatest(upvotes, 0) + greatest(comments, 0))::float8 ^ 2)))
    / (1 + 3.8416 / (greatest(upvotes, 0) + greatest(comments, 0)))) END;
