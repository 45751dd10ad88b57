"""The registry of read models: the one list that maintenance, reconciliation, metrics and tests follow.

Each read model is defined in one SQL file (`file`, under db/readmodels/): its tables or view, its
*truth* (a view `<name>_truth` that computes it from the source tables), its maintenance and the
named statements that read it. This list says how each is kept, how stale it may be, and how it is
checked and repaired. Adding a read model is one SQL file plus one entry here;
tests/test_registry.py fails when the database has a read model this list does not know, or the
other way round.

The kinds:
- ledger: a base table plus a delta ledger, kept by statement triggers; its view adds the pending
  deltas, so it is exact at every commit. The fold moves deltas into the base.
- fold: a table the fold keeps, from a ledger of its own or from the keys the steps before it
  touched (db/schema/ledgers.sql), as of the fold's clock.
- matview: a materialized view refreshed CONCURRENTLY from the refresh queue; `clock` names the
  queue row that schedules it.
- redis: per-user sets in Redis, written through by the API.

The registry's order is the fold's: a step comes after the steps whose touched keys it reads.
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
    clock: str | None = None  # its clock in the `freshness` statement; None: exact, no clock
    # Where the reconciler finds its keys, a range of the first key column at a time: the relations
    # that hold them, each with its key column, the first counted as "checked". () compares the
    # read model whole (its key is not a number).
    keys_from: tuple[tuple[str, str], ...] = ()
    fold: str | None = None  # its step in the fold (a SQL function, db/schema/ledgers.sql)
    rebuild: str | None = None  # rebuilds it whole from the source (a SQL function)
    repair: str | None = None  # repairs given keys of its first key column (a SQL function)
    # For a fold-kept model: the ledgers whose rows it follows (the fold's clock is as old as their
    # oldest row), and whether a view `<name>_pending` lists the keys waiting for the next fold (the
    # reconciler leaves them out).
    ledgers: tuple[str, ...] = ()
    pending: bool = False

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
COUNTERS = "project_counter_deltas"

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
        "mv_chain_directory", Kind.FOLD, "mv_chain_directory.sql", ("chain_id",),
        bound_seconds=FOLD_BOUND_S, clock="fold", keys_from=(("chains", "id"), ("mv_chain_directory", "chain_id")),
        fold="chain_directory_fold", rebuild="chain_directory_rebuild", repair="chain_directory_set",
        ledgers=("chain_stat_deltas",), pending=True,
    ),
    ReadModel(
        "mv_forum_threads", Kind.FOLD, "mv_forum_threads.sql", ("thread_id",),
        bound_seconds=FOLD_BOUND_S, clock="fold",
        keys_from=(("forum_threads", "id"), ("mv_forum_threads", "thread_id")),
        fold="forum_threads_fold", rebuild="forum_threads_rebuild", repair="forum_threads_set",
        ledgers=("forum_thread_deltas",), pending=True,
    ),
    ReadModel(
        "mv_feed_projects", Kind.FOLD, "mv_feed_projects.sql", ("id",),
        bound_seconds=FOLD_BOUND_S, clock="fold", keys_from=(*PROJECT, ("mv_feed_projects", "id")),
        fold="feed_fold", rebuild="feed_rebuild", repair="feed_apply", ledgers=(COUNTERS,), pending=True,
    ),
    ReadModel(
        "mv_chain_projects", Kind.FOLD, "mv_chain_projects.sql", ("project_id", "chain_id"),
        bound_seconds=FOLD_BOUND_S, clock="fold",
        keys_from=(("chain_projects", "project_id"), ("mv_chain_projects", "project_id")),
        fold="chain_projects_fold", rebuild="chain_projects_rebuild", repair="chain_projects_apply",
        ledgers=(COUNTERS,), pending=True,
    ),
    ReadModel(
        "mv_leaderboard_users", Kind.FOLD, "mv_leaderboard_users.sql", ("user_id",),
        bound_seconds=FOLD_BOUND_S, clock="fold", keys_from=(*USER, ("mv_leaderboard_users", "user_id")),
        fold="leaderboard_users_fold", rebuild="leaderboard_users_rebuild", repair="leaderboard_users_set",
        ledgers=("user_stat_deltas", COUNTERS), pending=True,
    ),
    ReadModel(
        "mv_search_documents", Kind.FOLD, "mv_search_documents.sql", ("doc_id", "doc_type"),
        bound_seconds=FOLD_BOUND_S, clock="fold",
        keys_from=(("mv_search_documents", "doc_id"), ("projects", "id"), ("users", "id"), ("chains", "id")),
        fold="search_documents_fold", rebuild="search_documents_rebuild", repair="search_documents_repair",
        ledgers=("search_document_changes", COUNTERS, "chain_stat_deltas"), pending=True,
    ),
    ReadModel(
        "mv_search_words", Kind.FOLD, "mv_search_documents.sql", ("word",),
        bound_seconds=FOLD_BOUND_S, clock="fold",
        fold="search_documents_fold", rebuild="search_documents_rebuild", repair="search_words_repair",
        ledgers=("search_document_changes",), pending=True,
    ),
    ReadModel(
        "mv_leaderboard_projects", Kind.MATVIEW, "mv_leaderboard_projects.sql", ("project_id",),
        bound_seconds=REFRESH_BOUND_S, clock="mv_leaderboard_projects",
    ),
    ReadModel(
        "upvote_sets", Kind.REDIS, "upvote_sets.sql", ("user_id", "project_id"), bound_seconds=1.0,
        clock="upvote_sets", rebuild="upvote_sets_rebuild",
    ),
)  # fmt: skip


def of_kind(*kinds: Kind) -> list[ReadModel]:
    return [m for m in REGISTRY if m.kind in kinds]


def unique(names: Iterator[str | None]) -> list[str]:
    """The distinct non-empty names, in order (several read models share a fold step or a rebuild)."""
    return list(dict.fromkeys(n for n in names if n))


def fold_steps() -> list[str]:
    """The fold's steps, in order (several read models share one)."""
    return unique(m.fold for m in REGISTRY)


def fold_ledgers() -> list[str]:
    """The ledgers the fold-kept read models follow: their oldest row dates the fold's clock."""
    return unique(ledger for m in of_kind(Kind.FOLD) for ledger in m.ledgers)


def rebuilds(*kinds: Kind) -> list[str]:
    """The rebuild functions of the read models of these kinds (of all, when none is given)."""
    return unique(m.rebuild for m in REGISTRY if not kinds or m.kind in kinds)


def refreshed_with(clock: str) -> list[ReadModel]:
    """The materialized views a refresh of this queue row refreshes, in order."""
    return [m for m in of_kind(Kind.MATVIEW) if m.clock == clock]
