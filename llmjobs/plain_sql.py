"""Plain SQL behind two hot QuerySet verbs of ``BatchJob`` (issue 17): ``add_to_counters``
and ``status_of``.

A runner adds to its job's counters a few times a second and reads the job's status
twice a second, for the whole run. Through the ORM each call spent 0.4 to 0.6 ms
building ``F()`` expressions and compiling them; here the statement is built once per
database and set of counters (``lru_cache``) and only the QuerySet's ``WHERE`` is
compiled per call. Same semantics as ``update(c=F("c") + delta)``: ``c = c + %s`` in one
``UPDATE``, safe against concurrent writers; on the QuerySet's database (``using()``,
routers). A QuerySet whose ``WHERE`` needs more than its own table (joins, aggregates,
slices) goes through the ORM instead, with the same result.

Django's database layer only (no models imported here: ``models.py`` imports this).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db import connections, models, router, transaction
from django.db.models.expressions import Col
from django.db.models.lookups import Exact
from django.db.models.sql.datastructures import BaseTable

__all__ = ["add_to_counters", "status_of"]


def _is_id(value: Any) -> bool:
    """A plain integer a 64-bit id column can hold (else the ORM's own rules apply)."""
    return type(value) is int and -(2**63) <= value < 2**63


def _own_where(queryset: models.QuerySet[Any], using: str) -> tuple[str, list[Any]] | None:
    """The QuerySet's ``WHERE`` as SQL over its own table alone (``("", [])``: every row), or
    ``None`` when it is more than that. Raises ``EmptyResultSet`` when no row can match."""
    query = queryset.query
    meta: Any = query.model._meta  # type: ignore[union-attr]
    table: str = meta.db_table
    if (
        query.is_sliced
        or query.combinator
        or query.distinct_fields
        or query.annotations
        or query.extra
        or query.group_by is not None
        or query.where.contains_aggregate
        or any(alias != table or not isinstance(join, BaseTable) for alias, join in query.alias_map.items())
    ):
        return None
    where = query.where
    if not where:
        return "", []
    if len(where.children) == 1 and not where.negated:  # filter(pk=...): the runner's case, not compiled
        lookup = where.children[0]
        pk = meta.pk
        if (
            isinstance(lookup, Exact)
            and isinstance(lookup.lhs, Col)
            and lookup.lhs.target is pk
            and lookup.lhs.alias == table
            and _is_id(lookup.rhs)
        ):
            qn = connections[using].ops.quote_name
            return f"{qn(table)}.{qn(str(pk.column))} = %s", [lookup.rhs]
    try:
        sql, params = query.get_compiler(using).compile(where)
    except FullResultSet:
        return "", []
    return sql, list(params)


def _using(queryset: models.QuerySet[Any], *, write: bool) -> str:
    """The database the QuerySet would run on (``using()``, else the routers)."""
    chosen: str | None = queryset._db  # type: ignore[attr-defined]
    route = router.db_for_write if write else router.db_for_read
    return chosen or route(queryset.model, **queryset._hints)  # type: ignore[attr-defined]


@lru_cache(maxsize=256)
def _counters_sql(using: str, vendor: str, meta: Any, names: tuple[str, ...]) -> tuple[str, tuple[Any, ...]]:
    """``UPDATE <table> SET c = c + %s, ...`` for the counters ``names`` (field names), and the
    fields (to adapt the values). ``vendor`` is part of the key: the quoting is the backend's."""
    qn = connections[using].ops.quote_name
    fields = tuple(meta.get_field(name) for name in names)
    sets = ", ".join(f"{qn(f.column)} = {qn(f.column)} + %s" for f in fields)
    return f"UPDATE {qn(meta.db_table)} SET {sets}", fields


@lru_cache(maxsize=64)
def _status_sql(using: str, vendor: str, meta: Any) -> str:
    qn = connections[using].ops.quote_name
    table, pk = qn(meta.db_table), qn(meta.pk.column)
    return f"SELECT {qn(meta.get_field('status').column)} FROM {table} WHERE {table}.{pk} = %s"


def add_to_counters(queryset: models.QuerySet[Any], deltas: Mapping[str, Any]) -> int:
    """``queryset.update(**{field: F(field) + delta})`` in one ``UPDATE`` (``deltas``: field name
    -> amount); returns the number of rows. Nothing to add: no query."""
    if not deltas:
        return 0
    using = _using(queryset, write=True)
    try:
        where = _own_where(queryset, using)
    except EmptyResultSet:
        return 0
    if where is None:  # more than this table: the ORM's own UPDATE
        return queryset.update(**{name: models.F(name) + delta for name, delta in deltas.items()})
    connection = connections[using]
    sql, fields = _counters_sql(using, connection.vendor, queryset.model._meta, tuple(deltas))
    params = [f.get_db_prep_save(v, connection) for f, v in zip(fields, deltas.values(), strict=True)]
    if where[0]:
        sql = f"{sql} WHERE {where[0]}"
        params.extend(where[1])
    with transaction.mark_for_rollback_on_error(using=using), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def status_of(queryset: models.QuerySet[Any], pk: Any) -> str | None:
    """The ``status`` of the row ``pk`` among ``queryset`` (``None``: not there), in one
    plain ``SELECT``."""
    using = _using(queryset, write=False)
    try:
        where = _own_where(queryset, using) if _is_id(pk) else None
    except EmptyResultSet:
        return None
    if where is None:  # a join, or a pk given as text, or out of range: the ORM's rules
        return queryset.filter(pk=pk).values_list("status", flat=True).first()
    connection = connections[using]
    sql, params = _status_sql(using, connection.vendor, queryset.model._meta), [pk]
    if where[0]:
        sql = f"{sql} AND ({where[0]})"
        params.extend(where[1])
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return row[0] if row else None
