"""Which rows a self-contained batch carries, as constant SQL derived from the source model.

A batch holds every row changed in its piece of the run (``capture.changed``), plus the rows
those rows need: the dimension rows its rows reference (the counterparty, staff, currency...
of a changed order), and the dimension rows that embed a changed parent (the staff of a
changed department, the counterparties of a changed legal address). References to fact rows
are not followed: dim_transaction copies the order ids as plain integers.

Which tables are facts and which parents are embedded is declared by the source model
(``Table.role``, ``Table.embeds``); the rules below are derived from it, never kept by hand.
Window-only tables (the fact sources, nobody pulls them in) are selected as changed alone;
the others ("closure tables") by ``changed OR key IN extra``, where the extra keys are
published as transaction-local settings by ``closure_sql``.
"""

from __future__ import annotations

from totes.extract.capture import changed, is_new, stamp
from totes.extract.plan import new_keys_setting
from totes.identifiers import quote
from totes.source.model import TABLES, TABLES_BY_NAME, UNREPRESENTABLE, Column, Table

# Source tables that become warehouse facts: a batch carries their changed rows only.
FACT_TABLES: tuple[str, ...] = tuple(t.name for t in TABLES if t.is_fact_source)

# Dimension rows that embed a parent's columns: a changed parent pulls in these children.
EMBEDDED_PARENTS: dict[str, str] = {t.name: t.embeds for t in TABLES if t.embeds is not None}


def pullers(table: Table) -> list[tuple[Table, str]]:
    """(child table, fk column) pairs whose selected rows need a row of ``table``; references
    to fact rows (transaction -> orders) are not followed: dim_transaction copies the ids."""
    return [
        (child, fk.column)
        for child in TABLES
        for fk in child.foreign_keys
        if fk.table == table.name and table.name not in FACT_TABLES
    ]


def is_window_only(table: Table) -> bool:
    return table.name not in EMBEDDED_PARENTS and not pullers(table)


def closure_tables() -> list[Table]:
    """The tables whose batch rows are not only their changed rows, in model order."""
    return [t for t in TABLES if not is_window_only(t)]


def _extra_setting(table: Table) -> str:
    return f"totes.extra_{table.name}"


def _extra_keys(table: Table) -> str:
    """The published extra keys of ``table`` as a one-column set (a hashed subplan)."""
    return f"(SELECT unnest(CAST(current_setting('{_extra_setting(table)}') AS integer[])))"


def _extra_array(table: Table) -> str:
    return f"CAST((SELECT current_setting('{_extra_setting(table)}')) AS integer[])"


def _new_array(table: Table) -> str:
    return f"CAST((SELECT current_setting('{new_keys_setting(table.name)}')) AS integer[])"


def pulled_setting(table: Table) -> str:
    """The setting holding the keys of ``table`` that the copied window-only rows reference."""
    return f"totes.pulled_{table.name}"


def _pulled_keys(table: Table) -> str:
    return f"CAST(current_setting('{pulled_setting(table)}') AS integer[])"


def _key_columns(table: Table) -> list[str]:
    return [table.key, *(fk.column for fk in table.foreign_keys)]


def closure_sql() -> str:
    """One statement that publishes, for the published selection, every closure table's extra
    keys (rows not changed themselves that the batch still carries: referenced by selected
    rows, or embedding a changed parent) as transaction-local settings.

    References from window-only tables (the big fact tables) come from the keys
    ``copy_batch`` collected from their rows as it copied them (``totes.pulled_<table>``), so
    no fact table is scanned twice; what remains reads only the small dimension tables, and
    the key sets never leave the server. The per-table COPY then reads
    ``changed OR key IN extra``: one scan of its table.
    """
    closure = closure_tables()
    changed_needed: list[Table] = []
    # Closures that follow a closure table's own rows need its whole key set.
    full_sets_needed = {
        child.name for table in closure for child, _ in pullers(table) if not is_window_only(child)
    }
    derived: list[str] = []

    def changed_cte(table: Table) -> str:
        if table not in changed_needed:
            changed_needed.append(table)
        return f"c_{table.name}"

    # Children come after their parents in TABLES: build the closures children first.
    for table in reversed(closure):
        parts = []
        parent_fk = table.embedded_parent
        if parent_fk is not None:
            parent = TABLES_BY_NAME[parent_fk.table]
            join = f"p.{quote(parent.key)} = t.{quote(parent_fk.column)}"
            parts.append(
                f"SELECT t.{quote(table.key)} AS k FROM {quote(table.name)} t "  # noqa: S608  # nosec B608
                f"JOIN {changed_cte(parent)} p ON {join}"
            )
        if any(is_window_only(child) for child, _ in pullers(table)):
            parts.append(f"SELECT unnest({_pulled_keys(table)}) AS k")
        for child, column in pullers(table):
            if is_window_only(child):
                continue
            parts.append(
                f"SELECT c.{quote(column)} AS k FROM {quote(child.name)} c "  # noqa: S608  # nosec B608
                f"WHERE c.{quote(column)} IS NOT NULL AND c.{quote(child.key)} IN "
                f"(SELECT k FROM k_{child.name})"
            )
        derived.append(f"e_{table.name} AS (" + " UNION ".join(parts) + ")")
        if table.name in full_sets_needed:
            derived.append(
                f"k_{table.name} AS (SELECT {quote(table.key)} AS k FROM {changed_cte(table)} "  # noqa: S608  # nosec B608
                f"UNION SELECT k FROM e_{table.name})"
            )
    changed_ctes = [
        f"c_{t.name} AS MATERIALIZED (SELECT "  # noqa: S608  # nosec B608
        + ", ".join(f"s.{quote(c)}" for c in _key_columns(t))
        + f" FROM {quote(t.name)} s WHERE {changed('s')})"
        for t in TABLES
        if t in changed_needed
    ]
    publish = ", ".join(
        f"set_config('{_extra_setting(t)}', "  # noqa: S608  # nosec B608
        f"(SELECT COALESCE(CAST(array_agg(DISTINCT k) AS text), '{{}}') FROM e_{t.name}), true)"
        for t in closure
    )
    return "WITH " + ",\n".join(changed_ctes + derived) + "\nSELECT " + publish


def _fits(column: Column, alias: str) -> str | None:
    rule = column.representable
    return rule.format(c=f"{alias}.{quote(column.name)}") if rule else None


def _unrepresentable(table: Table, alias: str) -> str:
    """SQL: NULL for a row whose values all fit the raw lake types, else a JSON object naming
    each value that does not, with its original text (built only for such rows)."""
    checked = [(c, _fits(c, alias)) for c in table.columns if c.representable]
    if not checked:
        return "CAST(NULL AS text)"
    fits_all = " AND ".join(f"({rule})" for _, rule in checked)
    members = ", ".join(
        f"'{c.name}', CASE WHEN NOT ({rule}) THEN CAST({alias}.{quote(c.name)} AS text) END"
        for c, rule in checked
    )
    return (
        f"CASE WHEN {fits_all} THEN NULL"
        f" ELSE CAST(json_strip_nulls(json_build_object({members})) AS text) END"
    )


def _lake_value(column: Column, alias: str) -> str:
    """SQL: the column as the raw lake holds it (NULL where its value does not fit)."""
    value = f"{alias}.{quote(column.name)}"
    rule = _fits(column, alias)
    return f"CASE WHEN {rule} THEN {value} END" if rule else value


def selection_sql(table: Table, *, keyed: bool = False) -> str:
    """The self-contained SELECT of one table's rows for the published selection and closure
    (``copy_batch``): changed rows, plus the extra keys its closure published, in the raw
    lake's columns (``Table.lake_schema``).

    ``keyed``: the new rows' keys were published (``plan.publish_new_keys``, a small change
    set), so the rows are found through the primary key, not by scanning the table again; the
    change test still applies, so both forms select the same rows."""
    columns = _lake_columns(table)
    key = f"s.{quote(table.key)}"
    where = changed("s")
    if keyed and is_window_only(table):
        where = f"{key} = ANY({_new_array(table)}) AND {where}"
    elif keyed:
        candidates = f"{_new_array(table)} || {_extra_array(table)}"
        where = f"{key} = ANY({candidates}) AND ({where} OR {key} = ANY({_extra_array(table)}))"
    elif not is_window_only(table):
        where = f"({where}) OR {key} IN {_extra_keys(table)}"
    return f"SELECT {columns} FROM {quote(table.name)} s WHERE {where}"  # noqa: S608  # nosec B608


def _lake_columns(table: Table) -> str:
    values = [_lake_value(c, "s") for c in table.columns]
    return ", ".join([*values, f"{_unrepresentable(table, 's')} AS {quote(UNREPRESENTABLE)}"])


def _copy(selection: str) -> str:
    return f"COPY ({selection}) TO STDOUT WITH (FORMAT csv, HEADER false)"


def copy_sql(table: Table, *, keyed: bool = False) -> str:
    return _copy(selection_sql(table, keyed=keyed))


# The column a whole-run read adds to each row: the index of the run's piece it belongs to.
PIECE_COLUMN = "_piece"
PIECE_BOUNDS_SETTING = "totes.piece_bounds"
READ_PIECE_SETTING = "totes.read_piece"


def run_copy_sql(table: Table, *, one_piece: bool = False) -> str:
    """``run_selection_sql`` as a COPY (the pg8000 readers parse its CSV)."""
    return _copy(run_selection_sql(table, one_piece=one_piece))


def run_selection_sql(table: Table, *, one_piece: bool = False) -> str:
    """The SELECT of every row of ``table`` new for the published selection (all of the run's
    pieces), each with the index of its piece (``width_bucket`` of its stamp against the
    published piece bounds, the first stamp of every piece but the first), in piece order:
    one read of the table for the whole run, which the client cuts into the pieces
    (``extract.readers``). Reading the table once per piece costs P scans, so only a run of a
    few pieces does (``one_piece``: the rows of the published piece ``READ_PIECE_SETTING``,
    unsorted, so they stream as the scan finds them instead of after the sort)."""
    bounds = f"(SELECT CAST(current_setting('{PIECE_BOUNDS_SETTING}') AS timestamp[]))"
    piece = f"width_bucket({stamp('s')}, {bounds})"
    select = f"SELECT {_lake_columns(table)}, {piece} AS {quote(PIECE_COLUMN)}"
    if one_piece:
        wanted = f"(SELECT CAST(current_setting('{READ_PIECE_SETTING}') AS integer))"
        return (
            f"{select} FROM {quote(table.name)} s"  # nosec B608
            f" WHERE {is_new('s')} AND {piece} = {wanted}"
        )
    return (
        f"{select} FROM {quote(table.name)} s"  # nosec B608
        f" WHERE {is_new('s')} ORDER BY {quote(PIECE_COLUMN)}"
    )


def extras_copy_sql(table: Table) -> str:
    """COPY of the rows of closure table ``table`` the published piece carries without their
    being changed in it (its published extra keys), found through the primary key: with
    ``run_copy_sql``'s rows of the piece, exactly what ``copy_sql`` selects."""
    key = f"s.{quote(table.key)}"
    # ARRAY(subquery): computed once (an init plan), then probed through the primary key.
    keys = f"ARRAY(SELECT unnest(CAST(current_setting('{_extra_setting(table)}') AS integer[])))"
    return _copy(
        f"SELECT {_lake_columns(table)} FROM {quote(table.name)} s"  # noqa: S608  # nosec B608
        f" WHERE {key} = ANY({keys}) AND NOT {changed('s')}"
    )
