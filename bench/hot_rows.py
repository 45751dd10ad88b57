"""Hot-row collapse: upvote throughput on one viral project against upvotes spread over all projects.

Three designs measured side by side, in one run, on one scratch database:
  none    - the source tables alone (no read model at all: the ceiling)
  naive   - a per-row trigger that increments one counter row per project (what the seed describes)
  ledger  - this project's statement-level triggers appending to a delta ledger, with the fold
            running every second as the refresher runs it

Each transaction toggles one upvote (delete it if present, else insert it), the API's POST toggle.
pgbench drives 16 clients for --seconds per case.

    python -m bench.hot_rows [--scale small] [--clients 16] [--seconds 10]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from bench.scratch import scratch_database
from denorm.logs import configure_logging
from denorm.maintenance import fold_all, rebuild_all
from denorm.readmodels import Kind
from denorm.seed import SCALES, seed

# Each client toggles its own users only, so two clients never race on one (user, project) row.
TOGGLE = """\\set u :client_id * {stride} + random(1, {stride})
{pick}
WITH gone AS (DELETE FROM project_upvotes WHERE user_id = :u AND project_id = :p RETURNING 1)
INSERT INTO project_upvotes (user_id, project_id) SELECT :u, :p WHERE NOT EXISTS (SELECT 1 FROM gone);
"""

NAIVE_SETUP = """
CREATE TABLE naive_counters (project_id bigint PRIMARY KEY, upvote_count bigint NOT NULL);
INSERT INTO naive_counters SELECT project_id, upvote_count FROM project_counters_truth;
CREATE FUNCTION naive_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE naive_counters SET upvote_count = upvote_count + 1 WHERE project_id = NEW.project_id;
    ELSE
        UPDATE naive_counters SET upvote_count = upvote_count - 1 WHERE project_id = OLD.project_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER naive_count AFTER INSERT OR DELETE ON project_upvotes
    FOR EACH ROW EXECUTE FUNCTION naive_count();
ALTER TABLE project_upvotes DISABLE TRIGGER naive_count;
"""

# The read models' triggers on project_upvotes (each ledger-kept read model that follows it has its own).
LEDGER_TRIGGERS = """
SELECT tgname FROM pg_trigger
WHERE tgrelid = 'project_upvotes'::regclass AND NOT tgisinternal AND tgname <> 'naive_count' ORDER BY 1
"""


def set_design(conn: psycopg.Connection[tuple[object, ...]], design: str) -> None:
    for (name,) in conn.execute(LEDGER_TRIGGERS).fetchall():
        action = "ENABLE" if design == "ledger" else "DISABLE"
        conn.execute(f"ALTER TABLE project_upvotes {action} TRIGGER {name}".encode())
    action = "ENABLE" if design == "naive" else "DISABLE"
    conn.execute(f"ALTER TABLE project_upvotes {action} TRIGGER naive_count".encode())


def pgbench(url: str, script: str, clients: int, seconds: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        out = subprocess.run(
            [
                "pgbench",
                "-n",
                "-M",
                "prepared",
                "-c",
                str(clients),
                "-j",
                "2",
                "-T",
                str(seconds),
                "-f",
                path,
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        Path(path).unlink()
    match = re.search(r"tps = ([0-9.]+)", out.stdout)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    return float(match.group(1))


class Folder(threading.Thread):
    """Folds the ledgers every second, as the refresher does in production."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(1.0):
                fold_all(conn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="small")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    configure_logging("WARNING")
    scale = SCALES[args.scale]
    with scratch_database("bench_hot") as url:
        seed(url, scale)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(NAIVE_SETUP.encode())
            hot = conn.execute("SELECT project_id FROM project_counters ORDER BY upvote_count DESC LIMIT 1").fetchone()
            assert hot is not None
            scripts = {
                "hot": TOGGLE.format(stride=scale.users // args.clients, pick=f"\\set p {hot[0]}"),
                "spread": TOGGLE.format(
                    stride=scale.users // args.clients, pick=f"\\set p random(1, {scale.projects})"
                ),
            }
            print(
                f"dataset={args.scale} ({scale.users} users, {scale.projects} projects), "
                f"{args.clients} clients, {args.seconds} s per case, one upvote toggle per transaction"
            )
            print(f"{'design':<8} {'hot tps':>10} {'spread tps':>11} {'hot/spread':>11}")
            for design in ("none", "naive", "ledger"):
                set_design(conn, design)
                folder = Folder(url) if design == "ledger" else None
                if folder:
                    folder.start()
                tps = {case: pgbench(url, script, args.clients, args.seconds) for case, script in scripts.items()}
                if folder:
                    folder.stop.set()
                    folder.join()
                ratio = tps["hot"] / tps["spread"]
                print(f"{design:<8} {tps['hot']:>10.0f} {tps['spread']:>11.0f} {ratio:>11.2f}")
                time.sleep(1)
            set_design(conn, "ledger")
            # The toggles ran with the ledger triggers off in two cases: rebuild before any check.
            rebuild_all(conn, Kind.LEDGER)


if __name__ == "__main__":
    main()
