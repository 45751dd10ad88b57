-- Prebuilt JSON items: each read model row carries its item of the API's answer as JSON text, built
-- once when the row is written (a fold, a refresh) instead of on every read. A read then only
-- concatenates the items of a page, plus the exact counts where the answer shows them (read live
-- from the zero-staleness counters and appended to the item's "head", so an item never shows a
-- stale count).
--
-- Measured at `standard` (docs/api.md): building twenty feed items with json_build_object was two
-- thirds of the feed query's time in Postgres; the chain directory went from 0.06 to 0.02 ms.
--
-- Timestamps are rendered in UTC here, whatever the session's TimeZone, so an item's text does not
-- depend on who wrote the row (the fold, the refresher, a migration); the format is the one
-- Postgres's own JSON gives in UTC ("2026-11-27T07:00:00.5+00:00").

-- JSON text of a value, 'null' for NULL. STABLE because to_json is, so the planner can inline them.
CREATE FUNCTION json_str(v text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN coalesce(to_json(v)::text, 'null');

CREATE FUNCTION json_ts(v timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN coalesce('"' || (to_json(v AT TIME ZONE 'UTC') #>> '{}') || '+00:00"', 'null');

-- A page's next_cursor, as JSON: URL-safe base64, unpadded, of the JSON array [kind, the last item's
-- key, its id] (services/api/cursors.py decodes it, checking the kind and the key's type).
-- `key_and_id` is the key as JSON (a number, or a quoted timestamp), a comma, and the id.
CREATE FUNCTION page_cursor(kind text, key_and_id text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN '"' || translate(encode(convert_to('[' || to_json(kind)::text || ',' || key_and_id || ']', 'UTF8'), 'base64'),
                        E'+/=\n', '-_') || '"';
