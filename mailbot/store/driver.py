"""Core statements run through the driver's executemany, each value bound as SQLAlchemy binds it (its type's
bind processor), without SQLAlchemy's executemany making a parameter dict per row and working out every
row's parameters anew, a datetime's text included: that was most of the CPU of the intake's batch write and
of the sender's record (bench/RESULTS.md, 13.D and the decide and outflow branches)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Connection, Dialect, Insert, Update
from sqlalchemy.engine import CursorResult


@dataclass(frozen=True)
class Plain:
    """A statement as the driver runs it on one dialect: its SQL, and for each parameter, in the driver's
    order, the bind processor SQLAlchemy would apply (its type's own); the values of those the statement
    holds itself (status = 'sent', a literal it compares with)."""

    sql: str
    order: tuple[str, ...]
    positional: bool
    binds: Mapping[str, Callable[[Any], Any] | None]
    constants: Mapping[str, Any]


@cache
def plain(statement: Insert | Update, names: tuple[str, ...], dialect: Dialect) -> Plain:
    """`statement` with the parameters `names` given for each row (an INSERT's: its columns)."""
    compiled = statement.compile(dialect=dialect, column_keys=list(names), for_executemany=True)
    named = tuple(dict.fromkeys(compiled.bind_names.values()))  # the parameters the SQL names
    order = tuple(compiled.positiontup or ()) if compiled.positional else named
    binds = {name: compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in order}
    constants = {name: compiled.binds[name].effective_value for name in order if name not in names}
    assert set(names) <= set(order), compiled.string  # every value given is a parameter
    assert not any(compiled.binds[name].required for name in constants), compiled.string  # none is missing
    return Plain(compiled.string, order, compiled.positional, binds, constants)


def run_many(
    connection: Connection, statement: Insert | Update, rows: Sequence[Mapping[str, Any]], **same: Any
) -> CursorResult[Any]:
    """`statement` once for each of `rows` (their values by parameter name, the same names in each), with
    the values `same` for every row; `rows` is not empty."""
    compiled = plain(statement, (*rows[0], *same), connection.dialect)
    fixed = {name: _bound(compiled, name, value) for name, value in {**compiled.constants, **same}.items()}
    steps = [(name, name in fixed, fixed.get(name), compiled.binds[name] or as_is) for name in compiled.order]
    bound = [tuple(value if is_fixed else bind(row[name]) for name, is_fixed, value, bind in steps) for row in rows]
    return connection.exec_driver_sql(
        compiled.sql, bound if compiled.positional else [dict(zip(compiled.order, row)) for row in bound]
    )


def _bound(compiled: Plain, name: str, value: Any) -> Any:
    bind = compiled.binds[name]
    return value if bind is None else bind(value)


def as_is(value: Any) -> Any:
    """The bind step of a type that has none."""
    return value
