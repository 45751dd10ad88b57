"""The registry of read models: the one list that maintenance, reconciliation, metrics and tests follow.

Each read model is defined in one SQL file (`file`, under db/): its tables or view, its *truth*
(a view `<name>_truth` that computes it from the source tables), its maintenance and the named
statements that read it. This list says how each is kept, how stale it may be, and how it is
checked and repaired. Adding a read model is one SQL file plus one entry here;
tests/test_registry.py fails when the database has a read model this list does not know, or the
other way round.

The kinds:
- ledger: a base table plus a delta ledger, kept by statement triggers; its view adds the pending
  deltas, so it is exact at every commit. The fold moves deltas into the base (`fold`: a SQL
  function of max_keys returning keys and deltas folded and the projects it touched).
- fold: a table the fold keeps for the projects the ledger folds touched (`fold`: a SQL function of
  those project ids), as of the fold's clock.
- matview: a materialized view refreshed CONCURRENTLY from the refresh queue; `clock` names the
  queue row that schedules it (a view refreshed with another names that one).
- redis: per-user sets in Redis, written through by the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from db import READMODELS_DIR


class Kind(StrEnum):
    LEDGER = "ledger"
    FOLD = "fold"
    MATVIEW = "matview"
    REDIS = "redis"


@dataclass(frozen=True)
class ReadModel:
    name: str
    kind: Kind
    file: str  # under db/readmodels/
    key: tuple[str, ...]
    # Compared with the truth besides the key; () compares every column of the truth.
    columns: tuple[str, ...] = ()
    bound_seconds: float = 0.0  # how stale it may be: 0 means exact at every commit
    clock: str | None = None  # its read_model_freshness clock; None: exact, no clock
    # Where the reconciler finds its keys, a range of the first key column at a time: the source
    # relation and the read model's own stored relation, each with its key column.
    keys_from: tuple[tuple[str, str], ...] = ()
    fold: str | None = None  # its step in the fold (a SQL function)
    rebuild: str | None = None  # rebuilds it whole from the source (a SQL function)
    repair: str | None = None  # repairs given keys of its first key column (a SQL function)
    # For a fold-kept model: a row whose (column) appears in (ledger, column) is pending for the
    # next fold, and not compared with the truth until then.
    pending: tuple[str, str, str] | None = None

    @property
    def truth(self) -> str:
        return f"{self.name}_truth"

    @property
    def path(self) -> Path:
        return READMODELS_DIR / self.file

    @property
    def refreshed(self) -> bool:
        """A materialized view with a queue row of its own."""
        return self.kind is Kind.MATVIEW and self.clock == self.name


FOLD_BOUND_S = 2.0  # the fold runs every REFRESHER_FOLD_MS (0.5 s)
REFRESH_BOUND_S = 5.0
USER = (("users", "id"),)
PROJECT = (("projects", "id"),)

REGISTRY: tuple[ReadModel, ...] = (
    ReadModel(
        "project_counters", Kind.LEDGER, "project_counters.sql", ("project_id",), ("upvote_count", "comment_count"),
        keys_from=(*PROJECT, ("project_counters_base", "project_id")),
        fold="project_counters_fold", rebuild="project_counters_rebuild", repair="project_counters_repair",
    ),
    ReadModel(
        "user_dashboard_stats", Kind.LEDGER, "user_stats.sql", ("user_id",),
        ("project_count", "upvotes_received", "comments_received", "upvotes_given", "unread_messages",
         "pending_intros_received", "chains_joined"),
        keys_from=(*USER, ("user_stats_base", "user_id")),
        fold="user_stats_fold", rebuild="user_stats_rebuild", repair="user_stats_repair",
    ),
    ReadModel(
        "intro_request_stats", Kind.LEDGER, "user_stats.sql", ("user_id",),
        ("sent_pending", "sent_accepted", "sent_declined", "received_pending", "received_accepted",
         "received_declined"),
        keys_from=(*USER, ("user_stats_base", "user_id")),
        fold="user_stats_fold", rebuild="user_stats_rebuild", repair="user_stats_repair",
    ),
    ReadModel(
        "message_conversations_denorm", Kind.LEDGER, "message_conversations_denorm.sql", ("user_id", "other_user_id"),
        ("last_message_id", "last_message_at", "last_message_preview", "last_sender_id", "message_count",
         "unread_count"),
        keys_from=(*USER, ("conversation_base", "user_id")),
        fold="conversations_fold", rebuild="conversations_rebuild", repair="conversations_repair",
    ),
    ReadModel(
        "mv_feed_projects", Kind.FOLD, "mv_feed_projects.sql", ("id",),
        bound_seconds=FOLD_BOUND_S, clock="fold", keys_from=(*PROJECT, ("mv_feed_projects", "id")),
        fold="feed_apply", rebuild="feed_rebuild", repair="feed_apply",
        pending=("id", "project_counter_deltas", "project_id"),
    ),
    ReadModel(
        "mv_chain_projects", Kind.FOLD, "mv_chain_projects.sql", ("project_id", "chain_id"),
        bound_seconds=FOLD_BOUND_S, clock="fold",
        keys_from=(("chain_projects", "project_id"), ("mv_chain_projects", "project_id")),
        fold="chain_projects_apply", rebuild="chain_projects_rebuild", repair="chain_projects_apply",
        pending=("project_id", "project_counter_deltas", "project_id"),
    ),
    ReadModel(
        "mv_leaderboard_projects", Kind.MATVIEW, "mv_leaderboard_projects.sql", ("project_id",),
        bound_seconds=REFRESH_BOUND_S, clock="mv_leaderboard_projects",
    ),
    ReadModel(
        "mv_leaderboard_users", Kind.MATVIEW, "mv_leaderboard_users.sql", ("user_id",),
        bound_seconds=REFRESH_BOUND_S, clock="mv_leaderboard_users",
    ),
    ReadModel(
        "mv_chain_directory", Kind.MATVIEW, "mv_chain_directory.sql", ("chain_id",),
        bound_seconds=REFRESH_BOUND_S, clock="mv_chain_directory",
    ),
    ReadModel(
        "mv_forum_threads", Kind.MATVIEW, "mv_forum_threads.sql", ("thread_id",),
        bound_seconds=REFRESH_BOUND_S, clock="mv_forum_threads",
    ),
    ReadModel(
        "mv_search_documents", Kind.MATVIEW, "mv_search_documents.sql", ("doc_type", "doc_id"),
        # Popularity is as of the refresh by design: upvotes do not ask for a refresh of the
        # whole corpus (mv_search_documents.sql), so it is not compared.
        ("title", "subtitle", "slug", "document", "words"),
        bound_seconds=REFRESH_BOUND_S, clock="mv_search_documents",
    ),
    ReadModel(
        "mv_search_words", Kind.MATVIEW, "mv_search_documents.sql", ("word",),
        bound_seconds=REFRESH_BOUND_S, clock="mv_search_documents",
    ),
    ReadModel(
        "upvote_sets", Kind.REDIS, "upvote_sets.sql", ("user_id", "project_id"), bound_seconds=1.0,
    ),
)  # fmt: skip


def of_kind(*kinds: Kind) -> list[ReadModel]:
    return [m for m in REGISTRY if m.kind in kinds]


def unique(names: Iterator[str | None]) -> list[str]:
    """The distinct non-empty names, in order (several read models share a fold step or a rebuild)."""
    return list(dict.fromkeys(n for n in names if n))


def ledger_folds() -> list[str]:
    return unique(m.fold for m in of_kind(Kind.LEDGER))


def fold_applies() -> list[str]:
    return unique(m.fold for m in of_kind(Kind.FOLD))


def rebuilds(*kinds: Kind) -> list[str]:
    """The rebuild functions of the read models of these kinds (of all, when none is given)."""
    return unique(m.rebuild for m in REGISTRY if not kinds or m.kind in kinds)


def refreshed_with(clock: str) -> list[ReadModel]:
    """The materialized views a refresh of this queue row refreshes, in order."""
    return [m for m in of_kind(Kind.MATVIEW) if m.clock == clock]
