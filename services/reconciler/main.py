"""Entry point of `denorm reconcile`: run once, print the one-line JSON summary, exit.

Exit status: 0 when the run finished (drift or not, repaired or not), 1 when it failed part way,
3 when another reconciler holds the lock (this one did nothing).
"""

from __future__ import annotations

import json

from denorm.config import Settings
from denorm.logs import get_logger
from services.reconciler.metrics import push_run
from services.reconciler.reconcile import Busy, Reconciler

log = get_logger("denorm.reconciler")
EXIT_FAILED = 1
EXIT_BUSY = 3


def run(settings: Settings, repair: bool) -> int:
    try:
        report = Reconciler(settings, repair=repair).run()
    except Busy as exc:
        print(json.dumps({"event": "reconcile summary", "status": "busy", "reason": str(exc)}), flush=True)
        return EXIT_BUSY
    except Exception as exc:
        log.error("reconcile failed", error=repr(exc))
        print(json.dumps({"event": "reconcile summary", "status": "failed", "reason": repr(exc)}), flush=True)
        return EXIT_FAILED
    if settings.reconciler_pushgateway_url:
        push_run(settings.reconciler_pushgateway_url, report)
    print(report.line(), flush=True)
    return 0 if report.status == "finished" else EXIT_FAILED
