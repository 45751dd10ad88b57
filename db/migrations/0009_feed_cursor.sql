-- The feed's next_cursor, built in Postgres with the page (services/api/routes/projects.py decodes
-- it): URL-safe base64, unpadded, of the JSON array [sort, last item's sort key, last item's id].
-- `key_and_id` is the key as JSON (a number, or a quoted timestamp), a comma, and the id.
CREATE FUNCTION feed_cursor(sort text, key_and_id text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN '"' || translate(encode(convert_to('[' || to_json(sort)::text || ',' || key_and_id || ']', 'UTF8'), 'base64'),
                        E'+/=\n', '-_') || '"';
