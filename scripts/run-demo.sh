#!/usr/bin/env bash
# Start the refresher in the background and the API in the foreground; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
HOST=${API_HOST:-127.0.0.1}
PORT=${API_PORT:-8000}
ADMIN_PORT=${API_ADMIN_PORT:-9100}

refresher_pid=
cleanup() { [[ -n "$refresher_pid" ]] && kill -TERM "$refresher_pid" 2>/dev/null; wait || true; }
trap cleanup EXIT

"$BIN/denorm" refresher &
refresher_pid=$!

cat <<MSG

  denorm demo on the tiny dataset ($DATABASE_URL)
    API docs:   http://$HOST:$PORT/docs   (also on the admin port: http://$HOST:$ADMIN_PORT/docs)
    health:     http://$HOST:$PORT/healthz   readiness: http://$HOST:$PORT/readyz
    the feed:   curl 'http://$HOST:$PORT/api/projects?sort=trending&limit=5'
    search:     curl 'http://$HOST:$PORT/api/search?q=reddis+cache'
    signed in:  curl -H "Authorization: Bearer \$($BIN/denorm token --user 1)" http://$HOST:$PORT/api/users/dashboard
    refreshes:  http://$HOST:$ADMIN_PORT/api/admin/refresh-status   metrics: http://$HOST:$ADMIN_PORT/metrics
                (the operators' routes answer on the admin port only; the refresher's metrics on :9101)
  Ctrl-C stops the API and the refresher.

MSG
"$BIN/denorm" api --host "$HOST" --port "$PORT" --admin-port "$ADMIN_PORT"
