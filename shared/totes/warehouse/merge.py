"""Merge one processed batch into the warehouse: one batch, one transaction.

Every table of the batch is bulk-copied (``COPY ... FROM STDIN``, CSV written by Arrow) into a
temporary staging table, then merged with one set-based statement per table:

- dimensions: upsert that moves only forward (the stored row changes only when the incoming
  lineage, ``source_version`` then ``oldest_version`` for the joined dimensions, is newer
  compared as a row), so batches applied in any order converge;
- ``dim_date``: inserted where missing (a calendar row never changes);
- facts: inserted where that version (natural id, last_updated) is not stored yet, so both the
  original and every changed version stay, each exactly once.

The batch's ledger row is inserted first (``ON CONFLICT DO NOTHING``) under a transaction-scoped
advisory lock that serialises loads: a batch already in the ledger is acknowledged and skipped,
and two concurrent deliveries of one batch load it once. Any failure rolls the whole batch back
and is raised naming the batch, the table and the cause.

Facts are inserted where their version is not stored yet by an anti-join (not ``ON CONFLICT``:
no speculative insertion per row). Two paths, same warehouse:

- per-row (incremental batches): references pre-checked set-based (one anti-join per foreign
  key, an error naming the missing ids), then the insert with the enforced foreign keys and
  every BI index maintained row by row (~40 us and ~25 us per inserted row, ``bench.py``);
- bulk (backfills): the fact table's foreign keys and secondary indexes are dropped inside the
  transaction, the rows inserted, each index rebuilt by one sort and the foreign keys re-added,
  which validates every stored row set-based (~6 us per stored row in all). A failed
  validation is diagnosed with the same anti-joins, so the error still names the ids. The
  fact table is locked against readers until commit.

``auto`` takes the bulk path only when the batch is large both absolutely and relative to the
table (see ``set_based_fk_check``).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
from pg8000.exceptions import DatabaseError, InterfaceError

from totes.errors import DatabaseUnavailable, TotesError
from totes.lake import Manifest, schema_fingerprint
from totes.star.model import STAR_TABLES, STAR_TABLES_BY_NAME, StarTable

# An arbitrary, fixed 64-bit key: "totes warehouse load". One warehouse writer at a time.
LOAD_LOCK_KEY = 0x70746573_6C6F6164
LEDGER = "etl_batch_ledger"
# Measured (bench.py, PostgreSQL 18, 2 cores): the per-row path costs ~65 us per inserted row
# (FK triggers ~40, nine BI indexes ~25); the bulk path ~6 us per stored row (re-validating nine
# FKs ~1.7, rebuilding nine indexes ~4). Bulk wins above ~1/11 of the table; the margins below
# keep readers' lock waits to real backfills.
BULK_FACT_ROWS = 50_000
BULK_FACT_SHARE = 1 / 10
# Server memory per sort of a bulk batch (work_mem: the insert's DISTINCT ON sort;
# maintenance_work_mem: each index rebuild), for the batch's transaction only. A 1M-row batch
# sorts in memory (~125MB) where the 4MB default spilled ~94MB to disk (insert 8.1 s -> 4.8 s).
# Loads are serialised, so this is at most one such sort at a time.
BULK_SORT_MEMORY = "256MB"
CSV_CHUNK_ROWS = 65_536
ANALYZE_ROWS = 10_000
FK_CHECKS = ("auto", "per-row", "set-based")

_PG_TYPE = {"TIME": "TIME(3)", "TIMESTAMP": "TIMESTAMP(3)"}


class LoadFailed(TotesError):
    """A batch could not be merged; nothing of it is visible. Names batch, table and cause."""


@dataclass(frozen=True)
class TableResult:
    staged: int
    inserted: int
    updated: int = 0

    @property
    def skipped(self) -> int:
        """Rows that changed nothing: versions already stored, older dimension versions,
        and repeats of a row within the batch."""
        return self.staged - self.inserted - self.updated


@dataclass(frozen=True)
class LoadResult:
    batch_id: str
    loaded: bool  # False: the ledger already held this batch, nothing was written
    tables: dict[str, TableResult] = field(default_factory=dict)

    def row_counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {**asdict(result), "skipped": result.skipped}
            for name, result in self.tables.items()
        }


def staging_name(table: StarTable) -> str:
    return f"stage_{table.name}"


def expected_fingerprint(table_name: str) -> str:
    """The schema fingerprint a processed file of this table must carry."""
    return schema_fingerprint(STAR_TABLES_BY_NAME[table_name].arrow_schema)


def load_batch(
    con, manifest: Manifest, tables: dict[str, pa.Table], *, fk_check: str = "auto"
) -> LoadResult:
    """Merge ``tables`` (star table name -> Arrow table with the processed schema) of the batch
    ``manifest`` names, atomically and at most once. ``con`` is a pg8000 native connection in
    autocommit state; if the connection breaks mid-batch the caller must discard it."""
    if fk_check not in FK_CHECKS:
        raise ValueError(f"fk_check must be one of {FK_CHECKS}")
    batch = manifest.batch_id
    unknown = sorted(set(tables) - set(STAR_TABLES_BY_NAME))
    if unknown:
        raise LoadFailed(f"batch {batch}: unknown star table(s) {unknown}")
    ordered = [t for t in STAR_TABLES if t.name in tables]
    arrays = {t.name: _conform(batch, t, tables[t.name]) for t in ordered}

    step = ("ledger", LEDGER)
    try:
        con.run("BEGIN")
        con.run("SELECT pg_advisory_xact_lock(:key)", key=LOAD_LOCK_KEY)
        if not _claim(con, manifest):
            con.run("ROLLBACK")
            return LoadResult(batch, loaded=False)
        for table in ordered:
            step = ("staging", table.name)
            _stage(con, table, arrays[table.name])
        results: dict[str, TableResult] = {}
        for table in ordered:
            step = ("merging", table.name)
            staged = arrays[table.name].num_rows
            if table.kind == "fact":
                bulk = fk_check == "set-based" or (
                    fk_check == "auto" and set_based_fk_check(staged, _stored_rows(con, table))
                )
                results[table.name] = _merge_fact(con, batch, table, staged, bulk)
            elif table.name == "dim_date":
                results[table.name] = _merge_calendar(con, table, staged)
            else:
                results[table.name] = _merge_dimension(con, batch, table, staged)
        step = ("ledger", LEDGER)
        result = LoadResult(batch, loaded=True, tables=results)
        con.run(
            "UPDATE etl_batch_ledger SET row_counts = CAST(:counts AS jsonb)"
            " WHERE batch_id = :batch",
            counts=json.dumps(result.row_counts(), sort_keys=True),
            batch=batch,
        )
        con.run("COMMIT")
        return result
    except LoadFailed:
        _rollback(con)
        raise
    except DatabaseError as exc:
        _rollback(con)
        what, table_name = step
        raise LoadFailed(f"batch {batch}: {what} {table_name} failed: {_describe(exc)}") from None
    except (InterfaceError, OSError) as exc:
        _rollback(con)
        what, table_name = step
        raise DatabaseUnavailable(
            f"batch {batch}: lost the warehouse connection while {what} {table_name}: {exc}"
        ) from None
    except BaseException:
        _rollback(con)
        raise


def _conform(batch: str, table: StarTable, data: pa.Table) -> pa.Table:
    """The batch's table in the model's column order and types, or a clear refusal."""
    schema = table.arrow_schema
    missing = [n for n in schema.names if n not in data.column_names]
    if missing:
        raise LoadFailed(f"batch {batch}: table {table.name} lacks column(s) {missing}")
    data = data.select(schema.names)
    wrong = [
        f"{f.name} is {data.schema.field(f.name).type}, expected {f.type}"
        for f in schema
        if not data.schema.field(f.name).type.equals(f.type)
    ]
    if wrong:
        raise LoadFailed(f"batch {batch}: table {table.name} has wrong types: {'; '.join(wrong)}")
    # Nullability is the warehouse's to enforce: its NOT NULL errors name table and column.
    return data.cast(pa.schema([f.with_nullable(True) for f in schema]))


def _claim(con, manifest: Manifest) -> bool:
    """Insert the batch's ledger row; False if another load already committed it."""
    extra = manifest.extra or {}
    rows = con.run(
        "INSERT INTO etl_batch_ledger"
        " (batch_id, source_batch_id, window_lo, window_hi, hi_utc, row_counts)"
        " VALUES (:batch, :source, CAST(:lo AS timestamp), CAST(:hi AS timestamp),"
        " CAST(:hi_utc AS timestamptz), '{}'::jsonb)"
        " ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
        batch=manifest.batch_id,
        source=manifest.source_batch_id,
        lo=manifest.window_lo,
        hi=manifest.window_hi,
        hi_utc=extra.get("hi_utc"),
    )
    return bool(rows)


def _columns(table: StarTable) -> list[str]:
    return [*table.column_names, *table.lineage]


def _stage(con, table: StarTable, data: pa.Table) -> None:
    """COPY the rows into an unconstrained temporary table that lives until commit."""
    defs = ", ".join(f"{c.name} {_PG_TYPE.get(c.sql_type, c.sql_type)}" for c in table.columns)
    name = staging_name(table)
    stamps = ", ".join(f"{stamp} TIMESTAMP(3)" for stamp in table.lineage)
    con.run(f"CREATE TEMP TABLE {name} ({defs}, {stamps}) ON COMMIT DROP")
    con.run(
        f"COPY {name} ({', '.join(_columns(table))}) FROM STDIN WITH (FORMAT csv)",
        stream=csv_chunks(data),
    )
    if data.num_rows >= ANALYZE_ROWS:  # temp tables get no autovacuum statistics
        con.run(f"ANALYZE {name}")


def csv_chunks(data: pa.Table, rows: int = CSV_CHUNK_ROWS) -> Iterator[bytes]:
    """The table as headerless CSV in bounded chunks (one COPY message each). Arrow quotes
    every string, so an empty string stays empty and an unquoted empty field is NULL."""
    options = pacsv.WriteOptions(include_header=False)
    for record_batch in data.to_batches(max_chunksize=rows):
        sink = io.BytesIO()
        pacsv.write_csv(record_batch, sink, options)
        yield sink.getvalue()


def _merge_dimension(con, batch: str, table: StarTable, staged: int) -> TableResult:
    """Upsert the newest staged row per key, replacing a stored row only when the incoming
    lineage is greater as a row: ``(source_version, oldest_version)`` for the joined
    dimensions, whose newest stamp alone can tie between two different snapshots."""
    cols = _columns(table)
    names = ", ".join(cols)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in [*cols[1:], "loaded_batch_id"])
    newest_first = ", ".join(f"{stamp} DESC" for stamp in table.lineage)
    stored = ", ".join(f"target.{stamp}" for stamp in table.lineage)
    incoming = ", ".join(f"EXCLUDED.{stamp}" for stamp in table.lineage)
    [[inserted, updated]] = con.run(
        f"WITH merged AS ("  # noqa: S608  # nosec B608
        f" INSERT INTO {table.name} AS target ({names}, loaded_batch_id)"
        f" SELECT DISTINCT ON ({table.key}) {names}, CAST(:batch AS varchar)"
        f" FROM {staging_name(table)} ORDER BY {table.key}, {newest_first}"
        f" ON CONFLICT ({table.key}) DO UPDATE SET {updates}"
        f" WHERE ROW({stored}) < ROW({incoming})"
        f" RETURNING (xmax = 0) AS inserted)"
        f" SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)"
        f" FROM merged",
        batch=batch,
    )
    return TableResult(staged, inserted, updated)


def _merge_calendar(con, table: StarTable, staged: int) -> TableResult:
    names = ", ".join(table.column_names)
    [[inserted]] = con.run(
        f"WITH merged AS ("  # noqa: S608  # nosec B608
        f" INSERT INTO {table.name} ({names})"
        f" SELECT DISTINCT ON ({table.key}) {names} FROM {staging_name(table)}"
        f" ORDER BY {table.key}"
        f" ON CONFLICT ({table.key}) DO NOTHING RETURNING 1)"
        f" SELECT count(*) FROM merged"
    )
    return TableResult(staged, inserted)


def _check_references(con, batch: str, table: StarTable) -> None:
    """Every reference of the staged facts must exist in its dimension (which this batch
    may just have filled): one anti-join per foreign key, failing with the missing ids."""
    for column, dim_name in table.references:
        dim = STAR_TABLES_BY_NAME[dim_name]
        [[missing, examples]] = con.run(
            f"SELECT count(DISTINCT s.{column}),"  # noqa: S608  # nosec B608
            f" (array_agg(DISTINCT s.{column}::text))[1:5]"
            f" FROM {staging_name(table)} s"
            f" WHERE s.{column} IS NOT NULL AND NOT EXISTS"
            f" (SELECT 1 FROM {dim.name} d WHERE d.{dim.key} = s.{column})"
        )
        if missing:
            raise LoadFailed(
                f"batch {batch}: table {table.name}: {column} references {missing}"
                f" {dim_name} row(s) that are neither in the warehouse nor in the batch,"
                f" e.g. {examples}"
            )


def set_based_fk_check(batch_rows: int, stored_rows: int) -> bool:
    """Whether the bulk path (drop foreign keys and BI indexes, insert, rebuild, re-validate)
    beats maintaining them row by row: only for a batch that is large and a sizeable share of
    the table it joins."""
    return batch_rows >= BULK_FACT_ROWS and batch_rows >= BULK_FACT_SHARE * stored_rows


def _stored_rows(con, table: StarTable) -> int:
    """The planner's row estimate (no scan); -1 (never analysed) counts as empty."""
    [[estimate]] = con.run(
        "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = CAST(:t AS regclass)",
        t=table.name,
    )
    return int(estimate)


def _merge_fact(con, batch: str, table: StarTable, staged: int, bulk: bool) -> TableResult:
    """Per-row path: references pre-checked (naming missing ids), then inserted with the foreign
    keys and every index maintained row by row. Bulk path: the foreign keys and the secondary
    (BI) indexes are dropped, the rows inserted, the indexes rebuilt by one sort each and the
    foreign keys re-added, which validates every stored row set-based; only if that fails are
    the references diagnosed, so the error still names the missing ids."""
    if not bulk:
        _check_references(con, batch, table)
        return TableResult(staged, _insert_new_versions(con, batch, table))
    con.run(f"SET LOCAL work_mem = '{BULK_SORT_MEMORY}'")
    con.run("SAVEPOINT fact_bulk")
    foreign_keys = _drop_foreign_keys(con, table)
    indexes = _drop_secondary_indexes(con, table)
    inserted = _insert_new_versions(con, batch, table)
    if not inserted:  # a redelivery: undo the drops instead of rebuilding for nothing
        con.run("ROLLBACK TO SAVEPOINT fact_bulk")
        return TableResult(staged, 0)
    con.run(f"SET LOCAL maintenance_work_mem = '{BULK_SORT_MEMORY}'")
    for definition in indexes:
        con.run(definition)
    if foreign_keys:
        additions = ", ".join(
            f"ADD CONSTRAINT {name} {definition}" for name, definition in foreign_keys
        )
        con.run("SAVEPOINT fact_references")
        try:
            con.run(f"ALTER TABLE {table.name} {additions}")
        except DatabaseError:
            con.run("ROLLBACK TO SAVEPOINT fact_references")
            _check_references(con, batch, table)  # names the missing ids if that was the cause
            raise
        con.run("RELEASE SAVEPOINT fact_references")
    return TableResult(staged, inserted)


def _insert_new_versions(con, batch: str, table: StarTable) -> int:
    """Insert the staged versions not stored yet, each once. An anti-join against the version
    key rather than ``ON CONFLICT DO NOTHING``: no speculative insertion per row (measured
    about twice as fast, three times on redelivery). Safe because loads are serialised by the
    advisory lock; the version key still refuses a duplicate if anything else wrote one."""
    names = ", ".join(_columns(table))
    version = [table.key, "last_updated_date", "last_updated_time"]
    matches = " AND ".join(f"f.{c} = s.{c}" for c in version)
    con.run(
        f"INSERT INTO {table.name} ({names}, loaded_batch_id)"  # noqa: S608  # nosec B608
        f" SELECT DISTINCT ON ({', '.join(version)}) {names}, CAST(:batch AS varchar)"
        f" FROM {staging_name(table)} s"
        f" WHERE NOT EXISTS (SELECT 1 FROM {table.name} f WHERE {matches})"
        f" ORDER BY {', '.join(version)}",
        batch=batch,
    )
    return con.row_count


def _drop_foreign_keys(con, table: StarTable) -> list[tuple[str, str]]:
    """Drop the fact table's foreign keys (inside the batch's transaction) and return their
    names and definitions, read from the catalog, to re-add after the insert."""
    foreign_keys = con.run(
        "SELECT quote_ident(conname), pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = CAST(:table AS regclass) AND contype = 'f' ORDER BY conname",
        table=table.name,
    )
    if foreign_keys:
        drops = ", ".join(f"DROP CONSTRAINT {name}" for name, _ in foreign_keys)
        con.run(f"ALTER TABLE {table.name} {drops}")
    return [(name, definition) for name, definition in foreign_keys]


def _drop_secondary_indexes(con, table: StarTable) -> list[str]:
    """Drop the fact table's indexes that back no constraint (the BI indexes; the primary and
    version keys stay) and return their definitions, read from the catalog, to rebuild."""
    indexes = con.run(
        "SELECT quote_ident(c.relname), pg_get_indexdef(i.indexrelid)"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = CAST(:table AS regclass) AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid"
        " AND k.conrelid = i.indrelid) ORDER BY c.relname",
        table=table.name,
    )
    if indexes:
        con.run(f"DROP INDEX {', '.join(name for name, _ in indexes)}")
    return [definition for _, definition in indexes]


def _rollback(con) -> None:
    with contextlib.suppress(Exception):  # a broken connection has nothing left to roll back
        con.run("ROLLBACK")


def _describe(exc: DatabaseError) -> str:
    """PostgreSQL's message, detail and the constraint or column it names."""
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    if not info:
        return str(exc)
    parts = [info.get("M", "error")]
    if info.get("D"):
        parts.append(info["D"])
    if info.get("n"):
        parts.append(f"constraint {info['n']}")
    if info.get("c"):
        parts.append(f"column {info['c']}")
    return f"{'; '.join(parts)} [SQLSTATE {info.get('C', '?')}]"
