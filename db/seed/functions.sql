-- Deterministic generators for `denorm seed`, installed in their own schema for the length of a run.
--
-- Every random draw is a hash of (row number, seed, stream): the same seed gives the same dataset,
-- whatever the order or the parallelism in which chunks run. All functions are one-expression SQL
-- so that the planner inlines them into the generate_series that calls them.

DROP SCHEMA IF EXISTS seed_util CASCADE;
CREATE SCHEMA seed_util;

-- A uniform draw in [0, 1): 53 bits of a 64-bit hash.
CREATE FUNCTION seed_util.rnd(stream integer, i bigint, seed bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ((hashint8extended(i, seed * 7919 + stream) >> 11) & 9007199254740991)::float8 / 9007199254740992.0;

-- A uniform integer in [1, n].
CREATE FUNCTION seed_util.uniform(stream integer, i bigint, seed bigint, n bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN 1 + floor(seed_util.rnd(stream, i, seed) * n)::bigint;

-- A skewed integer in [1, n]: rank n * u^s, so with s = 3 the first 1% of ranks draw about 22% of rows.
CREATE FUNCTION seed_util.skewed(stream integer, i bigint, seed bigint, n bigint, s float8) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN least(n, 1 + floor(n * power(seed_util.rnd(stream, i, seed), s))::bigint);

-- A bijection of [1, n] that decides which id holds popularity rank r (so that id order and
-- popularity are unrelated): multiplication by a prime larger than any n, plus a seeded offset.
CREATE FUNCTION seed_util.perm(r bigint, n bigint, seed bigint, stream integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN mod((r - 1) * 2147483647 + mod(hashint8extended(stream, seed) & 9223372036854775807, n), n) + 1;

-- How many rows rank r of n draws when `total` rows follow the power law CDF (r/n)^a.
-- The differences telescope, so the counts of all ranks add up to `total` exactly (before `cap`).
CREATE FUNCTION seed_util.share(r bigint, n bigint, total bigint, a float8) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN floor(total * power(r::float8 / n, a))::bigint - floor(total * power((r - 1)::float8 / n, a))::bigint;

-- The rows that ranks 1 .. r-1 drew: the id offset of rank r's first row.
CREATE FUNCTION seed_util.share_before(r bigint, n bigint, total bigint, a float8) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN floor(total * power((r - 1)::float8 / n, a))::bigint;

CREATE FUNCTION seed_util.pick(words text[], u float8) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN words[1 + floor(u * cardinality(words))::integer];

CREATE FUNCTION seed_util.adjectives() RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['Fast', 'Open', 'Tiny', 'Smart', 'Realtime', 'Distributed', 'Secure', 'Simple', 'Modern',
             'Scalable', 'Lightweight', 'Async', 'Reactive', 'Serverless', 'Embedded', 'Incremental'];

CREATE FUNCTION seed_util.techs() RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['Postgres', 'Redis', 'Kubernetes', 'Python', 'Rust', 'GraphQL', 'React', 'Kafka', 'Docker',
             'Terraform', 'Django', 'FastAPI', 'SQLite', 'Elasticsearch', 'WebAssembly', 'Golang',
             'TypeScript', 'Linux', 'Nginx', 'Prometheus'];

CREATE FUNCTION seed_util.things() RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['Cache', 'Queue', 'Dashboard', 'Toolkit', 'Scheduler', 'Search Engine', 'Feed', 'Tracker',
             'Analyzer', 'Gateway', 'Proxy', 'Notebook', 'Planner', 'Bot', 'Monitor', 'Pipeline',
             'Framework', 'CLI', 'Editor', 'Visualizer'];

CREATE FUNCTION seed_util.audiences() RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['small teams', 'data engineers', 'indie hackers', 'students', 'startups', 'researchers',
             'operators', 'designers', 'game developers', 'open source maintainers'];

CREATE FUNCTION seed_util.first_names() RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['Ada', 'Grace', 'Linus', 'Margaret', 'Alan', 'Barbara', 'Ken', 'Radia', 'Dennis', 'Frances',
             'Guido', 'Hedy', 'Edsger', 'Katherine', 'Donald', 'Lynn', 'Bjarne', 'Shafi', 'Niklaus', 'Sophie'];

CREATE FUNCTION seed_util.last_names() RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['Lovelace', 'Hopper', 'Torvalds', 'Hamilton', 'Turing', 'Liskov', 'Thompson', 'Perlman',
             'Ritchie', 'Allen', 'van Rossum', 'Lamarr', 'Dijkstra', 'Johnson', 'Knuth', 'Conway',
             'Stroustrup', 'Goldwasser', 'Wirth', 'Wilson'];

CREATE FUNCTION seed_util.phrases() RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['Love this, shipping it tomorrow.', 'How does it handle failover?', 'Great docs.',
             'Any plans for a hosted version?', 'This saved our team a week.', 'Benchmarks look solid.',
             'Does it support Postgres 15?', 'The Redis integration is neat.', 'Starred!',
             'Could you add an export button?', 'Works great on Kubernetes.', 'What is the license?',
             'Nice work on the onboarding.', 'Happy to help with the roadmap.', 'Let us pair on this.',
             'Sent you the notes from the call.', 'Thanks for the intro!', 'Can we sync next week?'];

CREATE FUNCTION seed_util.chain_words() RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['Builders', 'Guild', 'Circle', 'Collective', 'Club', 'Lab', 'Crew', 'Makers'];
