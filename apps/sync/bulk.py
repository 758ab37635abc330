"""Provides bulk writes of many rows in one statement, for receive and apply.

On PostgreSQL the rows are copied into a temporary table and moved from there
with one ``INSERT ... SELECT ... ON CONFLICT``: ``bulk_create`` would build a
statement with a placeholder per value, and quoting and parsing those costs
more than the write itself. Elsewhere (SQLite on a laptop) ``bulk_create`` is
cheap enough and is used as it is.

Values are written as they stand: no ``pre_save`` (an applied record keeps
the times its producer gave it), no signals, no history.
"""

from django.db import connections, models


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
    connection = connections[using]
    if connection.vendor != "postgresql" or not connection.in_atomic_block:
        options = {"ignore_conflicts": True}
        if update_fields:
            options = {
                "update_conflicts": True,
                "unique_fields": unique_fields,
                "update_fields": update_fields,
            }
        model._base_manager.using(using).bulk_create(objs, **options)
        return
    fields = [
        f
        for f in model._meta.concrete_fields
        if not (f.primary_key and isinstance(f, models.AutoField))
    ]
    rows = [
        [f.get_db_prep_save(getattr(obj, f.attname), connection) for f in fields]
        for obj in objs
    ]
    quote = connection.ops.quote_name
    meta = model._meta
    on_conflict = "DO NOTHING"
    if update_fields:
        changes = ", ".join(
            f"{quote(c)} = EXCLUDED.{quote(c)}"
            for c in (meta.get_field(name).column for name in update_fields)
        )
        on_conflict = f"DO UPDATE SET {changes}"
    target = ", ".join(quote(meta.get_field(name).column) for name in unique_fields)
    for obj in objs:
        # Saved now, as bulk_create would mark them: relations may follow.
        obj._state.adding = False
        obj._state.db = using
    copy(
        connection,
        meta.db_table,
        [f.column for f in fields],
        rows,
        f"ON CONFLICT ({target}) {on_conflict}",
    )


def copy(connection, table: str, columns: list[str], rows: list, conflict: str):
    """COPY ``rows`` into ``table`` through a temporary table (PostgreSQL).

    Must run inside a transaction: the temporary table empties on commit.
    """
    quote = connection.ops.quote_name
    names = ", ".join(quote(c) for c in columns)
    staging = quote(f"copy_{table}")
    with connection.cursor() as cursor:
        # The columns' types without the table's constraints or defaults.
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS "
            f"AS SELECT {names} FROM {quote(table)} WITH NO DATA"
        )
        with cursor.cursor.copy(f"COPY {staging} ({names}) FROM STDIN") as stream:
            for row in rows:
                stream.write_row(row)
        cursor.execute(
            f"INSERT INTO {quote(table)} ({names}) SELECT {names} FROM {staging} "
            f"{conflict}"
        )
        cursor.execute(f"TRUNCATE {staging}")
