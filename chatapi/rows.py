"""Model rows read and written with plain SQL, for the few queries on the path of every request.

`Manager.raw()` and `Model.save()` work out, on every call, which column maps to which field and how
each value is converted on its way in or out; that cost more CPU than running the query. Here it is
worked out once per model and database connection. Instances are ordinary model instances; no
pre_save/post_save signals are sent (chatapi has no receivers for them).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar, cast

from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model

M = TypeVar("M", bound=Model)
Reader = Callable[[Sequence[Any]], Model]

_readers: weakref.WeakKeyDictionary[BaseDatabaseWrapper, dict[type[Model], Reader]] = weakref.WeakKeyDictionary()


@cache
def columns(model: type[Model], alias: str = "") -> str:
    """The model's columns, in field order, for a SELECT that `rows` reads (`alias.` before each if given)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}{field.column}" for field in model._meta.concrete_fields)


def _reader(model: type[Model], connection: BaseDatabaseWrapper) -> Reader:
    per_connection = _readers.setdefault(connection, {})
    reader = per_connection.get(model)
    if reader is None:
        fields = model._meta.concrete_fields
        table = model._meta.db_table
        converters = []
        for index, field in enumerate(fields):
            column = field.get_col(table)
            for convert in connection.ops.get_db_converters(column) + field.get_db_converters(connection):
                converters.append((index, convert, column))
        alias = connection.alias
        field_names = [field.attname for field in fields]

        def reader(values: Sequence[Any]) -> Model:
            values = list(values)
            for index, convert, column in converters:
                values[index] = convert(values[index], column, connection)
            return model.from_db(alias, field_names, values)

        per_connection[model] = reader
    return reader


def rows(sql: str, params: Sequence[Any], *models: type[Model]) -> list[tuple[Model, ...]]:
    """Run `sql`, whose columns are `columns(model)` of each of `models` in turn; an instance of each per row."""
    connection = connections[router.db_for_read(models[0])]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        fetched = cursor.fetchall()
    readers = [(_reader(model, connection), len(model._meta.concrete_fields)) for model in models]
    result = []
    for row in fetched:
        start = 0
        instances = []
        for reader, width in readers:
            instances.append(reader(row[start : start + width]))
            start += width
        result.append(tuple(instances))
    return result


def instances(model: type[M], sql: str, params: Sequence[Any]) -> list[M]:
    """Run `sql`, which selects `columns(model)`: the rows as instances of `model`."""
    return [row[0] for row in rows(sql, params, model)]  # type: ignore[misc]


# Rows per INSERT statement: well under the bound parameters a statement may have (SQLite: 32,766).
_INSERT_BATCH = 500


def insert(*instances: Model) -> None:
    """INSERT `instances` (of one model) as they are, every field set, their primary keys included:
    several rows to a statement."""
    model = type(instances[0])
    connection = connections[router.db_for_write(model)]
    fields = model._meta.concrete_fields
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    for start in range(0, len(instances), _INSERT_BATCH):
        batch = instances[start : start + _INSERT_BATCH]
        values = [
            field.get_db_prep_save(getattr(instance, field.attname), connection)
            for instance in batch
            for field in fields
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {model._meta.db_table} ({columns(model)}) VALUES {', '.join([row] * len(batch))}",
                values,
            )
    for instance in instances:
        instance._state.adding = False
        instance._state.db = connection.alias


def update(instance: Model, fields: Sequence[str]) -> None:
    """UPDATE the given fields of `instance` (by primary key)."""
    model = type(instance)
    connection = connections[router.db_for_write(model)]
    meta = model._meta
    targets = cast("list[Field[Any, Any]]", [meta.get_field(name) for name in fields])  # fields with columns
    assignments = ", ".join(f"{field.column} = %s" for field in targets)
    values = [field.get_db_prep_save(getattr(instance, field.attname), connection) for field in targets]
    values.append(meta.pk.get_db_prep_value(instance.pk, connection))
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {meta.db_table} SET {assignments} WHERE {meta.pk.column} = %s", values)
