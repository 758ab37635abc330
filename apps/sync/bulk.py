"""Provides bulk writes of many rows in one statement, for receive and apply.

On PostgreSQL the rows are copied into a temporary table and moved from there
with one ``INSERT ... SELECT ... ON CONFLICT``: ``bulk_create`` would build a
statement with a placeholder per value, and quoting and parsing those costs
more than the write itself. Elsewhere (SQLite on a laptop) ``bulk_create`` is
cheap enough and is used as it is.

Values are written as they stand: no ``pre_save`` (an applied record keeps
the times its producer gave it), no signals, no history.

Also provides ``among``, a filter on a long list of values that PostgreSQL
gets as one array parameter rather than a placeholder per value.
"""

import datetime
import decimal
import uuid
from dataclasses import dataclass
from typing import NamedTuple

from django.db import IntegrityError, connections, models, transaction
from django.db.models import Lookup, Q


def write(
    model: type[models.Model],
    objs: list[models.Model],
    using: str,
    unique_fields: list[str],
    update_fields: list[str] | None = None,
) -> None:
    """Insert ``objs``; where ``unique_fields`` match a row, update or skip it.

    Rows that exist are updated with ``update_fields``, or left alone when it
    is None. ``objs`` must not repeat a key.
    """
    if not objs:
        return
    if not _copies(using):
        _bulk_create(model, objs, using, unique_fields, update_fields)
        return
    for obj in objs:
        # Saved now, as bulk_create would mark them: relations may follow.
        obj._state.adding = False
        obj._state.db = using
    fields = _columns(model)
    write_values(
        model,
        [{f.attname: getattr(obj, f.attname) for f in fields} for obj in objs],
        using,
        unique_fields,
        update_fields,
    )


def write_values(
    model: type[models.Model],
    rows: list[dict],
    using: str,
    unique_fields: list[str],
    update_fields: list[str] | None = None,
) -> None:
    """Like ``write``, for rows given as attribute name to Python value.

    A field missing from a row gets its default, as a new instance would.
    """
    if not rows:
        return
    if not _copies(using):
        objs = [model(**row) for row in rows]
        _bulk_create(model, objs, using, unique_fields, update_fields)
        return
    planned = Write(model, rows, unique_fields, update_fields)
    copy(connections[using], planned.prepare(connections[using]))


@dataclass
class Write:
    """Rows of one model to write, and what becomes of a key held already."""

    model: type[models.Model]
    rows: list[dict]
    unique_fields: list[str]
    update_fields: list[str] | None = None

    def prepare(self, connection) -> "Copy":
        """Return the COPY that writes the rows."""
        fields = _columns(self.model)
        plain = [_plain_type(field) for field in fields]
        largest = [_largest(field) for field in fields]
        binary = True
        prepared = []
        for row in self.rows:
            values = []
            for field, kind, limit in zip(fields, plain, largest, strict=True):
                if field.attname in row:
                    value = row[field.attname]
                else:
                    value = field.get_default()
                if (
                    value is None
                    or type(value) is not kind
                    or (kind is datetime.datetime and value.tzinfo is None)
                ):
                    value = field.get_db_prep_save(value, connection)
                if limit and type(value) is int and not -limit <= value < limit:
                    binary = False  # PostgreSQL must see it, and refuse it
                values.append(value)
            prepared.append(values)
        quote = connection.ops.quote_name
        meta = self.model._meta
        on_conflict = "DO NOTHING"
        if self.update_fields:
            changes = ", ".join(
                f"{quote(c)} = EXCLUDED.{quote(c)}"
                for c in (meta.get_field(name).column for name in self.update_fields)
            )
            on_conflict = f"DO UPDATE SET {changes}"
        target = ", ".join(
            quote(meta.get_field(name).column) for name in self.unique_fields
        )
        return Copy(
            meta.db_table,
            [f.column for f in fields],
            prepared,
            f"ON CONFLICT ({target}) {on_conflict}",
            binary,
        )


def write_new(writes: list[Write], using: str) -> None:
    """Like ``write_values`` for each of ``writes``, whose rows are most likely new.

    On PostgreSQL they are copied straight into their tables, all under one
    savepoint; if a key is held after all, that is undone and each is
    written as ``write_values`` does.
    """
    writes = [write for write in writes if write.rows]
    if not _copies(using):
        for write in writes:
            write_values(
                write.model, write.rows, using, write.unique_fields, write.update_fields
            )
        return
    connection = connections[using]
    copy_new(connection, [write.prepare(connection) for write in writes])


# Fields whose value, when it already has this exact Python type, goes to
# PostgreSQL as it is: their preparation would return it unchanged. A value
# of any other type (a number as text), or a time without its zone, is
# prepared as usual.
_PLAIN_TYPES = {
    models.DateTimeField: datetime.datetime,
    models.DecimalField: decimal.Decimal,
    models.UUIDField: uuid.UUID,
    models.CharField: str,
    models.TextField: str,
    models.IntegerField: int,
    models.BigIntegerField: int,
    models.PositiveIntegerField: int,
    models.PositiveSmallIntegerField: int,
    models.SmallIntegerField: int,
    models.BooleanField: bool,
    models.DateField: datetime.date,
}


# Integer columns by how far their values reach (-2**bits to 2**bits - 1).
_INTEGER_BITS = {
    models.SmallIntegerField: 15,
    models.PositiveSmallIntegerField: 15,
    models.SmallAutoField: 15,
    models.IntegerField: 31,
    models.PositiveIntegerField: 31,
    models.AutoField: 31,
    models.BigIntegerField: 63,
    models.PositiveBigIntegerField: 63,
    models.BigAutoField: 63,
}


def _largest(field: models.Field) -> int | None:
    """Return 2**bits for an integer column (see _INTEGER_BITS), else None."""
    if field.is_relation:
        field = field.target_field
    bits = _INTEGER_BITS.get(type(field))
    return None if bits is None else 2**bits


def _plain_type(field: models.Field) -> type | None:
    """Return the Python type ``field`` passes through unprepared, if any."""
    if field.is_relation:
        field = field.target_field
    return _PLAIN_TYPES.get(type(field))


def _copies(using: str) -> bool:
    """Tell whether writes go through COPY: PostgreSQL, in a transaction."""
    connection = connections[using]
    return connection.vendor == "postgresql" and connection.in_atomic_block


def _bulk_create(model, objs, using, unique_fields, update_fields) -> None:
    options = {"ignore_conflicts": True}
    if update_fields:
        options = {
            "update_conflicts": True,
            "unique_fields": unique_fields,
            "update_fields": update_fields,
        }
    model._base_manager.using(using).bulk_create(objs, **options)


def _columns(model: type[models.Model]) -> list[models.Field]:
    """Return the fields a write gives values for: all but an automatic key."""
    return [
        f
        for f in model._meta.concrete_fields
        if not (f.primary_key and isinstance(f, models.AutoField))
    ]


class Copy(NamedTuple):
    """Rows for one table, by column, and what becomes of a key held already.

    ``binary`` sends them in COPY's binary form, where bytes, keys and
    numbers go as they are held instead of being spelled out as text and
    parsed back. Only for values known to fit their columns: an integer too
    large for its column is cut short in that form, not refused.
    """

    table: str
    columns: list[str]
    rows: list[list]
    conflict: str = "ON CONFLICT DO NOTHING"
    binary: bool = False


def copy(connection, rows: Copy) -> None:
    """COPY ``rows`` through a temporary table, then into theirs (PostgreSQL).

    Must run inside a transaction: the temporary table empties on commit.
    """
    quote = connection.ops.quote_name
    names = ", ".join(quote(c) for c in rows.columns)
    staging = f"copy_{rows.table}"
    with connection.cursor() as cursor:
        # The columns' types without the table's constraints or defaults.
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(staging)} ON COMMIT "
            f"DELETE ROWS AS SELECT {names} FROM {quote(rows.table)} WITH NO DATA"
        )
        _stream(connection, cursor, rows._replace(table=staging))
        # Emptied as it is moved: cheaper than a TRUNCATE, which makes a new
        # file for the table each time.
        cursor.execute(
            f"WITH moved AS (DELETE FROM {quote(staging)} RETURNING {names}) "
            f"INSERT INTO {quote(rows.table)} ({names}) SELECT {names} FROM moved "
            f"{rows.conflict}"
        )


def copy_new(connection, copies: list[Copy]) -> None:
    """COPY rows that are most likely not held yet, for one table or several.

    They go straight into their tables. If a key is held after all, all of
    that is undone and each goes through ``copy``, whose conflict clause
    says what becomes of the held rows.
    """
    try:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            for rows in copies:
                _stream(connection, cursor, rows)
    except IntegrityError:
        for rows in copies:
            copy(connection, rows)


def copy_straight(connection, rows: Copy) -> None:
    """COPY ``rows`` into their table; a key it holds already is an IntegrityError."""
    with connection.cursor() as cursor:
        _stream(connection, cursor, rows)


def _stream(connection, cursor, rows: Copy) -> None:
    """COPY ``rows`` with the driver's own COPY; its errors become Django's."""
    quote = connection.ops.quote_name
    names = ", ".join(quote(c) for c in rows.columns)
    form = " (FORMAT BINARY)" if rows.binary else ""
    types = _types(cursor, rows.table, rows.columns) if rows.binary else None
    with (
        connection.wrap_database_errors,
        cursor.cursor.copy(
            f"COPY {quote(rows.table)} ({names}) FROM STDIN{form}"
        ) as stream,
    ):
        if types:
            stream.set_types(types)
        for row in rows.rows:
            stream.write_row(row)


def _types(cursor, table: str, columns: list[str]) -> list[int]:
    """Return the type of each of ``columns`` of ``table``, as PostgreSQL names it.

    Looked up once per table and process: a migration that changes a
    column's type restarts the servers.
    """
    known = _TYPES.get(table)
    if known is None:
        cursor.execute(
            "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attnum > 0 AND NOT attisdropped",
            [cursor.db.ops.quote_name(table)],
        )
        known = _TYPES[table] = dict(cursor.fetchall())
    return [known[column] for column in columns]


_TYPES: dict[str, dict[str, int]] = {}


def among(name: str, values, using: str) -> Q:
    """Return a filter: the field ``name`` has one of ``values``.

    On PostgreSQL the values travel as one array; ``__in`` would put a
    placeholder per value in the statement, and a statement of a thousand
    placeholders costs more to build than to run.
    """
    values = list(values)
    if connections[using].vendor != "postgresql" or not values:
        return Q(**{f"{name}__in": values})
    return Q(**{f"{name}__{AnyOf.lookup_name}": values})


@models.Field.register_lookup
class AnyOf(Lookup):
    """``field = ANY(array)``: the array is one parameter (PostgreSQL only)."""

    lookup_name = "any_of"
    prepare_rhs = False

    def get_db_prep_lookup(self, value, connection):
        field = self.lhs.output_field
        return "%s", [[field.get_db_prep_value(v, connection) for v in value]]

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} = ANY({rhs})", (*lhs_params, *rhs_params)
