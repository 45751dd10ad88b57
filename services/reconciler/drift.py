"""A read model compared with its truth, or a materialized view with its own definition: the rows that
differ, each missing (in the truth only), extra (in the model only) or different.

The comparison is one statement, so model and truth are read in one snapshot. It is composed here
from the registry (denorm/readmodels.py): the relation and column names come from that fixed list,
never from input. A fold-kept model's rows still pending for the next fold (the keys its view
`<name>_pending` lists) are left out: the fold will write them, and until then they differ from the
truth by design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from denorm.readmodels import Kind, ReadModel

KINDS = ("missing", "extra", "different")
Against = Literal["truth", "definition"]


@dataclass(frozen=True)
class DriftRow:
    key: tuple[Any, ...]
    kind: str  # missing | extra | different


def columns_of(conn: psycopg.Connection[Any], relation: str) -> tuple[str, ...]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        (relation,),
    ).fetchall()
    return tuple(str(r[0]) for r in rows)


def definition_of(conn: psycopg.Connection[Any], view: str) -> str:
    row = conn.execute("SELECT pg_get_viewdef(to_regclass(%s))", (view,)).fetchone()
    assert row is not None and row[0] is not None, view
    return str(row[0]).strip().rstrip(";")


def statement(
    model: ReadModel,
    compared: tuple[str, ...],
    other: sql.Composable,
    ranged: bool,
    pending: tuple[str, ...] = (),
) -> sql.Composed:
    """The comparison of `model` with `other` (its truth, or a subquery), over `compared` columns,
    leaving out the keys (named by `pending`'s columns) that its `<name>_pending` view lists."""
    key = [sql.Identifier(k) for k in model.key]
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in compared)
    where = sql.SQL("WHERE {k} >= %(lo)s AND {k} < %(hi)s").format(k=key[0]) if ranged else sql.SQL("")
    waiting: sql.Composable = sql.SQL("")
    if pending:
        waiting = sql.SQL("AND NOT EXISTS (SELECT 1 FROM {view} p WHERE {match})").format(
            view=sql.Identifier(f"{model.name}_pending"),
            match=sql.SQL(" AND ").join(
                sql.SQL("p.{c} = coalesce(t.{c}, m.{c})").format(c=sql.Identifier(c)) for c in pending
            ),
        )
    return sql.SQL(
        "SELECT {keys}, CASE WHEN m.present IS NULL THEN 'missing' WHEN t.present IS NULL THEN 'extra' "
        "ELSE 'different' END "
        "FROM (SELECT true AS present, {cols} FROM {other} x {where}) t "
        "FULL JOIN (SELECT true AS present, {cols} FROM {model} y {where}) m ON {join} "
        "WHERE ({tcols}) IS DISTINCT FROM ({mcols}) {waiting} "
        "ORDER BY {order}"
    ).format(
        keys=sql.SQL(", ").join(sql.SQL("coalesce(t.{k}, m.{k})").format(k=k) for k in key),
        cols=cols,
        other=other,
        where=where,
        model=sql.Identifier(model.name),
        join=sql.SQL(" AND ").join(sql.SQL("t.{k} = m.{k}").format(k=k) for k in key),
        tcols=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in ("present", *compared)),
        mcols=sql.SQL(", ").join(sql.SQL("m.{}").format(sql.Identifier(c)) for c in ("present", *compared)),
        waiting=waiting,
        order=sql.SQL(", ").join(sql.Literal(i + 1) for i in range(len(key))),
    )


def compare(
    conn: psycopg.Connection[Any],
    model: ReadModel,
    against: Against = "truth",
    lo: int | None = None,
    hi: int | None = None,
) -> list[DriftRow]:
    """The rows of `model` that differ from its truth (or, for a materialized view, its definition),
    within [lo, hi) of its first key column when given."""
    if model.kind is Kind.REDIS:
        raise ValueError("the Redis sets are compared by the reconciler (services/reconciler/redis_sets.py)")
    if against == "definition":
        if model.kind is not Kind.MATVIEW:
            raise ValueError(f"{model.name} is not a materialized view")
        other: sql.Composable = sql.SQL("({})").format(sql.SQL(definition_of(conn, model.name)))
    else:
        other = sql.Identifier(model.truth)
    compared = tuple(dict.fromkeys(model.key + (model.columns or columns_of(conn, model.truth))))
    pending = columns_of(conn, f"{model.name}_pending") if model.pending else ()
    ranged = lo is not None and hi is not None
    rows = conn.execute(statement(model, compared, other, ranged, pending), {"lo": lo, "hi": hi} if ranged else None)
    width = len(model.key)
    return [DriftRow(tuple(r[:width]), str(r[width])) for r in rows.fetchall()]


@dataclass
class Finding:
    """What one read model looked like against its truth."""

    examples_kept: int
    checked: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in KINDS})
    repaired: int = 0
    unrepaired: int = 0
    how: str = "compared"  # for a materialized view: compared, or why it was not

    def add(self, kind: str, key: Any) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < self.examples_kept:
            self.examples[kind].append(key)

    @property
    def drift(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            **self.counts,
            "repaired": self.repaired,
            "unrepaired": self.unrepaired,
            "how": self.how,
            "examples": {k: v for k, v in self.examples.items() if v},
        }
