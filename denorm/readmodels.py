"""The trigger-kept read models, each beside its truth view: what the tests and the reconciler compare."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class ReadModel:
    """A view the API reads, and the view that recomputes it from the source tables."""

    name: str
    truth: str
    key: tuple[str, ...]
    columns: tuple[str, ...]

    @property
    def compared(self) -> tuple[str, ...]:
        return self.key + self.columns


READ_MODELS: tuple[ReadModel, ...] = (
    ReadModel(
        "user_dashboard_stats",
        "user_dashboard_stats_truth",
        ("user_id",),
        (
            "project_count",
            "upvotes_received",
            "comments_received",
            "upvotes_given",
            "unread_messages",
            "pending_intros_received",
            "chains_joined",
        ),
    ),
    ReadModel(
        "intro_request_stats",
        "intro_request_stats_truth",
        ("user_id",),
        (
            "sent_pending",
            "sent_accepted",
            "sent_declined",
            "received_pending",
            "received_accepted",
            "received_declined",
        ),
    ),
    ReadModel(
        "message_conversations_denorm",
        "message_conversations_truth",
        ("user_id", "other_user_id"),
        (
            "last_message_id",
            "last_message_at",
            "last_message_preview",
            "last_sender_id",
            "message_count",
            "unread_count",
        ),
    ),
    ReadModel(
        "project_counters",
        "project_counters_truth",
        ("project_id",),
        ("upvote_count", "comment_count"),
    ),
)


@dataclass(frozen=True)
class Drift:
    """Rows of one model that differ from the truth: only in the model, only in the truth, or both."""

    model: str
    extra: list[tuple[Any, ...]]  # in the read model, not in the truth
    missing: list[tuple[Any, ...]]  # in the truth, not in the read model

    @property
    def clean(self) -> bool:
        return not self.extra and not self.missing


def _except(left: str, right: str, columns: tuple[str, ...]) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    return sql.SQL("SELECT {cols} FROM {left} EXCEPT SELECT {cols} FROM {right} ORDER BY 1, 2").format(
        cols=cols, left=sql.Identifier(left), right=sql.Identifier(right)
    )


def drift(conn: psycopg.Connection[Any], model: ReadModel) -> Drift:
    """Compare the whole model with its truth, in one snapshot when ``conn`` is in a transaction."""
    extra = conn.execute(_except(model.name, model.truth, model.compared)).fetchall()
    missing = conn.execute(_except(model.truth, model.name, model.compared)).fetchall()
    return Drift(model.name, [tuple(r) for r in extra], [tuple(r) for r in missing])


def all_drift(conn: psycopg.Connection[Any]) -> list[Drift]:
    """Every model's drift, all read in one REPEATABLE READ snapshot."""
    if not conn.autocommit:
        raise ValueError("pass an autocommit connection: the snapshot is this function's own")
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return [drift(conn, m) for m in READ_MODELS]
