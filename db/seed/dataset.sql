-- The generated dataset, one named block per table; each block fills rows lo .. hi of its table
-- (or popularity ranks lo .. hi), so the runner can cut a table into chunks and run them in
-- parallel sessions. Parameters: seed, anchor (the end of the year the data spans), the table
-- sizes n_*, and the chunk bounds lo and hi.

-- name: users
INSERT INTO users (id, username, display_name, bio, created_at)
SELECT i,
       'user' || i,
       seed_util.pick(seed_util.first_names(), seed_util.rnd(1, i, %(seed)s))
           || ' ' || seed_util.pick(seed_util.last_names(), seed_util.rnd(2, i, %(seed)s)),
       'Builds ' || lower(seed_util.pick(seed_util.techs(), seed_util.rnd(3, i, %(seed)s)))
           || ' things for ' || seed_util.pick(seed_util.audiences(), seed_util.rnd(4, i, %(seed)s)) || '.',
       %(anchor)s::timestamptz - interval '365 days' * (1 - (i - 1)::float8 / %(n_users)s)
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i;

-- name: projects
-- Owners are skewed (a few prolific users own many projects); a project is never older than its owner.
INSERT INTO projects (id, owner_id, title, tagline, description, tags, created_at, updated_at)
SELECT g.i, g.owner_id, g.title, g.tagline, g.description, g.tags, g.created_at, g.created_at
FROM (
    SELECT i,
           o.owner_id,
           seed_util.pick(seed_util.adjectives(), seed_util.rnd(11, i, %(seed)s)) || ' ' || w.tech
               || ' ' || w.thing AS title,
           'A ' || lower(w.thing) || ' for ' || seed_util.pick(seed_util.audiences(), seed_util.rnd(14, i, %(seed)s))
               AS tagline,
           'Built with ' || w.tech || ' and ' || seed_util.pick(seed_util.techs(), seed_util.rnd(15, i, %(seed)s))
               || '. ' || seed_util.pick(seed_util.phrases(), seed_util.rnd(16, i, %(seed)s))
               || ' Version ' || (1 + mod(i, 9)) || '.' || mod(i, 17) || ' adds a '
               || lower(seed_util.pick(seed_util.things(), seed_util.rnd(17, i, %(seed)s))) || '.' AS description,
           ARRAY[lower(w.tech), lower(replace(w.thing, ' ', '-'))] AS tags,
           greatest(u.created_at + interval '1 hour',
                    %(anchor)s::timestamptz - interval '365 days' * (1 - (i - 1)::float8 / %(n_projects)s))
               AS created_at
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
    CROSS JOIN LATERAL (
        SELECT seed_util.perm(seed_util.skewed(10, i, %(seed)s, %(n_users)s, 2.0), %(n_users)s, %(seed)s, 10)
            AS owner_id
    ) AS o
    CROSS JOIN LATERAL (
        SELECT seed_util.pick(seed_util.techs(), seed_util.rnd(12, i, %(seed)s)) AS tech,
               seed_util.pick(seed_util.things(), seed_util.rnd(13, i, %(seed)s)) AS thing
    ) AS w
    JOIN users AS u ON u.id = o.owner_id
) AS g;

-- name: project_upvotes
-- Popularity rank r draws share(r) upvotes from distinct users: an arithmetic walk through the user
-- ids with a stride coprime to n_users, starting at a seeded offset.
INSERT INTO project_upvotes (user_id, project_id, created_at)
SELECT mod(off.o + k * 1000003, %(n_users)s) + 1,
       p.id,
       p.created_at + (%(anchor)s::timestamptz - p.created_at) * power(seed_util.rnd(21, p.id * 1000003 + k, %(seed)s), 3)
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS r
CROSS JOIN LATERAL (
    SELECT seed_util.perm(r, %(n_projects)s, %(seed)s, 20) AS pid,
           least(%(n_users)s - 1, seed_util.share(r, %(n_projects)s, %(n_upvotes)s, %(upvote_a)s)) AS n
) AS x
JOIN projects AS p ON p.id = x.pid
CROSS JOIN LATERAL (SELECT mod(hashint8extended(p.id, %(seed)s) & 9223372036854775807, %(n_users)s) AS o) AS off
CROSS JOIN LATERAL generate_series(0, x.n - 1) AS k;

-- name: project_comments
-- Comments follow the same popularity ranks as upvotes (popular projects are discussed more).
INSERT INTO project_comments (id, project_id, author_id, body, created_at)
SELECT seed_util.share_before(r, %(n_projects)s, %(n_comments)s, %(comment_a)s) + k + 1,
       p.id,
       seed_util.uniform(31, p.id * 100003 + k, %(seed)s, %(n_users)s),
       seed_util.pick(seed_util.phrases(), seed_util.rnd(32, p.id * 100003 + k, %(seed)s)),
       p.created_at + (%(anchor)s::timestamptz - p.created_at) * power(seed_util.rnd(33, p.id * 100003 + k, %(seed)s), 2)
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS r
CROSS JOIN LATERAL (
    SELECT seed_util.perm(r, %(n_projects)s, %(seed)s, 20) AS pid,
           seed_util.share(r, %(n_projects)s, %(n_comments)s, %(comment_a)s) AS n
) AS x
JOIN projects AS p ON p.id = x.pid
CROSS JOIN LATERAL generate_series(0, x.n - 1) AS k;

-- name: chains
INSERT INTO chains (id, slug, name, description, owner_id, created_at)
SELECT i,
       'chain-' || i || '-' || lower(w.tech),
       w.tech || ' ' || seed_util.pick(seed_util.chain_words(), seed_util.rnd(41, i, %(seed)s)),
       'Where ' || seed_util.pick(seed_util.audiences(), seed_util.rnd(42, i, %(seed)s)) || ' share '
           || lower(w.tech) || ' projects.',
       seed_util.uniform(43, i, %(seed)s, %(n_users)s),
       %(anchor)s::timestamptz - interval '365 days' * (1 - (i - 1)::float8 / %(n_chains)s)
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
CROSS JOIN LATERAL (SELECT seed_util.pick(seed_util.techs(), seed_util.rnd(40, i, %(seed)s)) AS tech) AS w;

-- name: chain_projects
INSERT INTO chain_projects (chain_id, project_id, added_at)
SELECT c.id,
       mod((hashint8extended(c.id, %(seed)s + 1) & 9223372036854775807) + k * 1000003, %(n_projects)s) + 1,
       c.created_at + (%(anchor)s::timestamptz - c.created_at) * seed_util.rnd(51, c.id * 100003 + k, %(seed)s)
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS r
CROSS JOIN LATERAL (
    SELECT seed_util.perm(r, %(n_chains)s, %(seed)s, 50) AS cid,
           least(%(n_projects)s - 1, seed_util.share(r, %(n_chains)s, %(n_chain_projects)s, 0.5)) AS n
) AS x
JOIN chains AS c ON c.id = x.cid
CROSS JOIN LATERAL generate_series(0, x.n - 1) AS k;

-- name: chain_members
INSERT INTO chain_members (chain_id, user_id, joined_at)
SELECT c.id,
       mod((hashint8extended(c.id, %(seed)s + 2) & 9223372036854775807) + k * 1000003, %(n_users)s) + 1,
       c.created_at + (%(anchor)s::timestamptz - c.created_at) * seed_util.rnd(61, c.id * 100003 + k, %(seed)s)
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS r
CROSS JOIN LATERAL (
    SELECT seed_util.perm(r, %(n_chains)s, %(seed)s, 50) AS cid,
           least(%(n_users)s - 1, seed_util.share(r, %(n_chains)s, %(n_chain_members)s, 0.5)) AS n
) AS x
JOIN chains AS c ON c.id = x.cid
CROSS JOIN LATERAL generate_series(0, x.n - 1) AS k;

-- name: forum_threads
INSERT INTO forum_threads (id, chain_id, author_id, title, body, created_at)
SELECT i,
       seed_util.perm(seed_util.skewed(70, i, %(seed)s, %(n_chains)s, 2.0), %(n_chains)s, %(seed)s, 50),
       seed_util.uniform(71, i, %(seed)s, %(n_users)s),
       'Show: ' || seed_util.pick(seed_util.adjectives(), seed_util.rnd(72, i, %(seed)s)) || ' '
           || seed_util.pick(seed_util.techs(), seed_util.rnd(73, i, %(seed)s)) || ' '
           || lower(seed_util.pick(seed_util.things(), seed_util.rnd(74, i, %(seed)s))),
       seed_util.pick(seed_util.phrases(), seed_util.rnd(75, i, %(seed)s)),
       %(anchor)s::timestamptz - interval '365 days' * (1 - (i - 1)::float8 / %(n_threads)s)
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i;

-- name: forum_posts
INSERT INTO forum_posts (id, thread_id, author_id, body, created_at)
SELECT g.i, t.id, g.author_id, g.body,
       t.created_at + (%(anchor)s::timestamptz - t.created_at) * seed_util.rnd(83, g.i, %(seed)s)
FROM (
    SELECT i,
           seed_util.perm(seed_util.skewed(80, i, %(seed)s, %(n_threads)s, 2.0), %(n_threads)s, %(seed)s, 80)
               AS thread_id,
           seed_util.uniform(81, i, %(seed)s, %(n_users)s) AS author_id,
           seed_util.pick(seed_util.phrases(), seed_util.rnd(82, i, %(seed)s)) AS body
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
) AS g
JOIN forum_threads AS t ON t.id = g.thread_id;

-- name: messages
-- A skewed user `a` (a few users draw most messages) talks with one of up to 20 contacts `b`, most
-- often the first few; either may be the sender. Older messages are mostly read.
INSERT INTO messages (id, sender_id, recipient_id, body, created_at, read_at)
SELECT i,
       CASE WHEN forward THEN a ELSE b END,
       CASE WHEN forward THEN b ELSE a END,
       seed_util.pick(seed_util.phrases(), seed_util.rnd(94, i, %(seed)s)),
       created_at,
       CASE WHEN seed_util.rnd(95, i, %(seed)s) < 0.85 * (1 - age)
            THEN least(%(anchor)s::timestamptz, created_at + interval '2 days' * seed_util.rnd(96, i, %(seed)s))
       END
FROM (
    SELECT i, pair.a, pair.b, seed_util.rnd(93, i, %(seed)s) < 0.5 AS forward,
           %(anchor)s::timestamptz - interval '365 days' * (1 - (i - 1)::float8 / %(n_messages)s) AS created_at,
           -- 0 for the oldest message, 1 for the newest: the newest are the least likely to be read.
           power((i - 1)::float8 / %(n_messages)s, 8) AS age
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
    CROSS JOIN LATERAL (
        SELECT seed_util.perm(seed_util.skewed(90, i, %(seed)s, %(n_users)s, 3.0), %(n_users)s, %(seed)s, 90) AS a,
               floor(20 * power(seed_util.rnd(91, i, %(seed)s), 3))::bigint AS k
    ) AS pa
    -- b = (a + h) mod n_users + 1 with h < n_users - 1, which is never a.
    CROSS JOIN LATERAL (
        SELECT pa.a,
               mod(pa.a + mod(hashint8extended(pa.a * 64 + pa.k, %(seed)s) & 9223372036854775807,
                              %(n_users)s - 1), %(n_users)s) + 1 AS b
    ) AS pair
) AS g;

-- name: intro_requests
INSERT INTO intro_requests (id, requester_id, target_id, project_id, message, status, created_at, responded_at)
SELECT i, requester, CASE WHEN target = requester THEN mod(target, %(n_users)s) + 1 ELSE target END,
       CASE WHEN seed_util.rnd(103, i, %(seed)s) < 0.7 THEN seed_util.uniform(104, i, %(seed)s, %(n_projects)s) END,
       'Would love an intro: ' || seed_util.pick(seed_util.phrases(), seed_util.rnd(105, i, %(seed)s)),
       status, created_at,
       CASE WHEN status <> 'pending'
            THEN created_at + interval '3 days' * seed_util.rnd(106, i, %(seed)s) END
FROM (
    SELECT i,
           seed_util.uniform(100, i, %(seed)s, %(n_users)s) AS requester,
           seed_util.perm(seed_util.skewed(101, i, %(seed)s, %(n_users)s, 2.0), %(n_users)s, %(seed)s, 101) AS target,
           CASE WHEN u < 0.5 THEN 'pending' WHEN u < 0.85 THEN 'accepted' ELSE 'declined' END AS status,
           %(anchor)s::timestamptz - interval '365 days' * (1 - (i - 1)::float8 / %(n_intros)s) AS created_at
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
    CROSS JOIN LATERAL (SELECT seed_util.rnd(102, i, %(seed)s) AS u) AS s
) AS g
ON CONFLICT DO NOTHING;  -- a second pending request of one requester to one target for one project
