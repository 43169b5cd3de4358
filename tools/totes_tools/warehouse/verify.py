"""``python -m totes warehouse verify``: compare every warehouse table with the source.

What must hold (warehouse.md, issue 12):

- each dimension's live rows (``source_deleted_at IS NULL``) equal the star rows built from
  the source's current state, and every warehouse key absent at the source is marked deleted;
- each fact holds the source's current version (natural id, ``last_updated``) of every row,
  with equal content and not marked; warehouse keys absent at the source are marked; older
  versions of present keys are history (allowed);
- dim_date covers every date the source's facts reference, each row with its calendar
  attributes.

The expected star rows come from the project's own pure remodelling (``totes.star.remodel``)
over the source's rows, read as ingest reads them (the raw lake's types and side column,
through the same COPY parser) and passed through the same quality gates (``totes.quality``),
in bounded chunks. A source row the gates would set aside (a value the star cannot hold) is
not compared, and neither is a fact that points at a set-aside dimension row (it may wait in
``etl_parked_<fact>``); both are listed as notes, by key.

Cost, in bounded memory: per table, the key space is cut into ranges of ``range_keys`` keys.
Both sides give a count and a content digest per range (the sum of 64-bit row hashes of a
canonical text of the contract columns: the warehouse computes it in SQL, this process from the
remodelled Arrow rows; ``field_sql`` and ``field_text`` write the same text). Only ranges whose
digests differ are read again, row by row on both sides, to name the keys and columns that
differ. Each side reads one snapshot (``REPEATABLE READ READ ONLY``), so both passes see the
same data; verify never writes.

Output names tables, keys and column names only, never other values: it may reach shared
terminals and logs.
"""

from __future__ import annotations

import hashlib
import io
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pg8000.exceptions import DatabaseError
from pg8000.native import Connection

from totes import quality
from totes.db import DbCredentials, connect, set_socket_timeout
from totes.errors import SchemaDrift, TotesError
from totes.extract.closure import _lake_value, _unrepresentable
from totes.extract.snapshot import check_schema, snapshot
from totes.extract.stream import COPY_BLOCK_BYTES, _CsvChunks
from totes.identifiers import quote
from totes.settings import DEFAULT_WAREHOUSE_SCHEMA
from totes.source.model import TABLES, UNREPRESENTABLE, Table
from totes.star import model as star
from totes.star.dates import calendar
from totes.star.remodel import DIMENSION_BUILDERS, FACT_BUILDERS, STAR_TABLE_OF, conform
from totes.warehouse.migrations import available

RANGE_KEYS = 32_768
CHUNK_ROWS = 100_000
SHOW = 20
STATEMENT_SECONDS = 3600.0

# Kinds of difference, each a sentence about one key.
MISSING = "missing"
VERSION_MISSING = "current version missing"
MARKED = "marked deleted, but present at the source"
DIFFERS = "differs in"
NOT_MARKED = "absent at the source, but not marked deleted"
DATE_MISSING = "a referenced date, missing"
DATE_WRONG = "calendar attributes wrong in"

SOURCE_OF: dict[str, Table] = {
    name: next(t for t in TABLES if t.name == source) for source, name in STAR_TABLE_OF.items()
}


# -- one canonical text per value, written the same way in SQL and in Arrow -------------------


def field_sql(column: star.StarColumn, alias: str = "w") -> str:
    """SQL: the column's canonical text, ``<characters>:<text>``, or ``-`` for NULL."""
    c = f"{alias}.{quote(column.name)}"
    text = {
        "DATE": f"to_char({c}, 'YYYY-MM-DD')",
        "TIME": f"to_char({c}, 'HH24:MI:SS.MS')",
    }.get(column.sql_type, f"CAST({c} AS text)")
    return f"coalesce(CAST(length({text}) AS text) || ':' || {text}, '-')"


def field_text(column: star.StarColumn, values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The same canonical text as ``field_sql``, from the processed-lake Arrow type."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    text = values if column.sql_type == "VARCHAR" else pc.cast(values, pa.string())
    length = pc.cast(pc.utf8_length(text), pa.string())
    return pc.fill_null(pc.binary_join_element_wise(length, text, ":"), "-")


def row_sql(table: star.StarTable, alias: str = "w") -> str:
    return "concat_ws('|', " + ", ".join(field_sql(c, alias) for c in table.columns) + ")"


def hash_sql(table: star.StarTable, alias: str = "w") -> str:
    """SQL: the row's 64-bit hash (the first 8 bytes of md5 of its text, signed)."""
    return f"CAST(CAST('x' || left(md5({row_sql(table, alias)}), 16) AS bit(64)) AS bigint)"


def field_texts(table: star.StarTable, rows: pa.Table) -> list[pa.Array]:
    return [field_text(c, rows[c.name]) for c in table.columns]


def row_hashes(texts: list[pa.Array]) -> list[int]:
    if not texts or not len(texts[0]):
        return []
    joined = pc.binary_join_element_wise(*texts, "|").cast(pa.binary())
    return [
        int.from_bytes(hashlib.md5(b).digest()[:8], "big", signed=True)  # noqa: S324  # nosec B324 - a digest, not security
        for b in joined.to_pylist()
    ]


def range_sql(key: str, n: int) -> str:
    """SQL: the key's range number, ``floor(key / n)`` in exact integers."""
    k = f"CAST({key} AS bigint)"
    return f"(({k} - (({k} % {n}) + {n}) % {n}) / {n})"


# -- results ------------------------------------------------------------------------------


@dataclass
class Kind:
    count: int = 0
    shown: list[tuple[object, tuple[str, ...]]] = field(default_factory=list)


@dataclass
class TableVerdict:
    table: str
    source_rows: int = 0  # star rows built from the source (set-aside rows not counted)
    warehouse_rows: int = 0  # live rows (dimensions) or keys with a live current version (facts)
    all_rows: int = 0
    marked_rows: int = 0
    ranges: int = 0
    reread: int = 0  # ranges whose digests differed, compared row by row
    differences: dict[str, Kind] = field(default_factory=dict)
    notes: dict[str, Kind] = field(default_factory=dict)

    def add(self, kind: str, key: object, columns: tuple[str, ...] = (), show: int = SHOW) -> None:
        entry = self.differences.setdefault(kind, Kind())
        entry.count += 1
        if len(entry.shown) < show:
            entry.shown.append((key, columns))

    def note(self, kind: str, keys: Iterable[object], show: int = SHOW) -> None:
        entry = self.notes.setdefault(kind, Kind())
        for key in keys:
            entry.count += 1
            if len(entry.shown) < show:
                entry.shown.append((key, ()))

    @property
    def difference_count(self) -> int:
        return sum(k.count for k in self.differences.values())


@dataclass
class Verdict:
    tables: list[TableVerdict] = field(default_factory=list)
    seconds: float = 0.0
    range_keys: int = RANGE_KEYS

    @property
    def differences(self) -> int:
        return sum(t.difference_count for t in self.tables)

    def format(self) -> str:
        lines = [
            f"  {'table':<22}{'source':>10}{'warehouse':>11}{'marked':>9}{'rows':>10}"
            f"{'ranges':>8}{'re-read':>9}{'differences':>13}"
        ]
        for t in self.tables:
            lines.append(
                f"  {t.table:<22}{t.source_rows:>10}{t.warehouse_rows:>11}{t.marked_rows:>9}"
                f"{t.all_rows:>10}{t.ranges:>8}{t.reread:>9}{t.difference_count:>13}"
            )
        if self.differences:
            lines.append("differences (table, key):")
            for t in self.tables:
                for kind, entry in t.differences.items():
                    lines.extend(_named(t.table, kind, entry))
        notes = [(t.table, kind, e) for t in self.tables for kind, e in t.notes.items()]
        if notes:
            lines.append("not compared (not differences):")
            for table, kind, entry in notes:
                lines.extend(_named(table, kind, entry))
        tables = sum(1 for t in self.tables if t.difference_count)
        lines.append(
            f"result: {self.differences} difference(s) in {tables} table(s); {self.seconds:.1f} s"
            if self.differences
            else f"result: the warehouse matches the source; {self.seconds:.1f} s"
        )
        return "\n".join(lines)


def _named(table: str, kind: str, entry: Kind) -> list[str]:
    lines = []
    for key, columns in entry.shown:
        what = f"{kind} {', '.join(columns)}" if columns else kind
        lines.append(f"  {table} key {_key_text(key)}: {what}")
    if entry.count > len(entry.shown):
        lines.append(f"  {table}: ... and {entry.count - len(entry.shown)} more {kind}")
    return lines


def _key_text(key: object) -> str:
    return key.isoformat() if isinstance(key, date) else str(key)


# -- the source, read as ingest reads it ------------------------------------------------------


def _copy_sql(model: Table, where: str = "") -> str:
    values = [_lake_value(c, "s") for c in model.columns]
    columns = ", ".join([*values, f"{_unrepresentable(model, 's')} AS {quote(UNREPRESENTABLE)}"])
    return (
        f"COPY (SELECT {columns} FROM {quote(model.name)} s {where})"  # noqa: S608  # nosec B608
        " TO STDOUT WITH (FORMAT csv, HEADER false)"
    )


def copy_source(
    con: Connection,
    model: Table,
    on_chunk: Callable[[pa.Table], None],
    where: str = "",
    chunk_rows: int = CHUNK_ROWS,
) -> int:
    """Stream ``model``'s rows (``where``: a condition on alias ``s``) into Arrow chunks of the
    raw lake's schema, through ingest's own COPY parser; returns the rows."""
    sink = _CsvChunks(model, chunk_rows, on_chunk)
    blocks = io.BufferedWriter(sink, buffer_size=COPY_BLOCK_BYTES)
    con.run(_copy_sql(model, f"WHERE {where}" if where else ""), stream=blocks)
    blocks.flush()
    sink.finish()
    return sink.rows


def read_source(con: Connection, model: Table, where: str = "") -> pa.Table:
    parts: list[pa.Table] = []
    copy_source(con, model, parts.append, where)
    return pa.concat_tables(parts) if parts else model.lake_schema.empty_table()


@dataclass
class Gate:
    """The quality gates over source rows, remembering the keys set aside per source table."""

    aside: dict[str, set[int]] = field(default_factory=dict)

    def __call__(self, model: Table, rows: pa.Table) -> tuple[pa.Table, list[int]]:
        """The rows the star can take, and the keys set aside."""
        conformed, problems = quality.conform_columns(model, rows)
        if problems:  # the source schema was checked, so this is a bug, not data
            raise TotesError(f"{model.name}: {[p.message for p in problems]}")
        good_keys: dict[str, pa.Array] = {}
        aside_keys: dict[str, list[int]] = {}
        for fk in model.foreign_keys:
            refs = pc.unique(conformed[fk.column]).drop_null()
            bad = sorted(self.aside.get(fk.table, ()))
            good_keys[fk.table] = refs.filter(
                pc.invert(pc.is_in(refs, value_set=pa.array(bad, pa.int32())))
            )
            aside_keys[fk.table] = bad
        good, _, keys = quality.set_aside_rows(model, conformed, good_keys, aside_keys)
        self.aside.setdefault(model.name, set()).update(keys)
        return good, keys

    def refers_to_aside(self, model: Table, rows: pa.Table) -> pa.Array:
        """A mask of the rows that reference a set-aside row of another table."""
        mask = pa.array(np.zeros(rows.num_rows, dtype=bool))
        for fk in model.foreign_keys:
            bad = self.aside.get(fk.table)
            if bad:
                hit = pc.is_in(rows[fk.column], value_set=pa.array(sorted(bad), pa.int32()))
                mask = pc.or_(mask, pc.fill_null(hit, False))
        return mask


# -- one table --------------------------------------------------------------------------------


@dataclass
class Expected:
    """Star rows built from some source rows, with the keys read and the keys not compared."""

    rows: pa.Table
    source_keys: np.ndarray
    skipped: set[int]


class TableCheck:
    """Verifying one star table (not the calendar) against the source."""

    def __init__(
        self,
        source: Connection,
        warehouse: Connection,
        table: star.StarTable,
        gate: Gate,
        range_keys: int,
        show: int,
    ):
        self.source = source
        self.warehouse = warehouse
        self.table = table
        self.gate = gate
        self.n = range_keys
        self.show = show
        self.model = SOURCE_OF[table.name]
        parent = self.model.embedded_parent
        self.parent_model = (
            next(t for t in TABLES if t.name == parent.table) if parent is not None else None
        )
        self.parent: pa.Table | None = None
        self.verdict = TableVerdict(table.name)
        self.dates: set[date] = set()

    # the expected rows of some source rows

    def expected(self, rows: pa.Table) -> Expected:
        keys = rows[self.model.key].to_numpy(zero_copy_only=False)
        good, aside = self.gate(self.model, rows)
        skipped = set(aside)
        if self.table.kind == "fact":
            refers = self.gate.refers_to_aside(self.model, good)
            if pc.any(refers).as_py():
                skipped |= set(good.filter(refers)[self.model.key].to_pylist())
                good = good.filter(pc.invert(refers))
            built = FACT_BUILDERS[self.table.name]({self.model.name: good})
        else:
            sources = {self.model.name: good}
            if self.parent_model is not None and self.parent is not None:
                sources[self.parent_model.name] = self.parent
            built = DIMENSION_BUILDERS[self.table.name](sources)
        return Expected(built, keys, skipped)

    def load_parent(self) -> None:
        if self.parent_model is not None:
            rows = read_source(self.source, self.parent_model)
            self.parent, _ = self.gate(self.parent_model, rows)

    # pass 1: digests per range

    def source_digests(self) -> dict[int, list[int]]:
        digests: dict[int, list[int]] = {}

        def on_chunk(rows: pa.Table) -> None:
            found = self.expected(rows)
            self._note_skipped(found.skipped)
            built = found.rows
            self.verdict.source_rows += built.num_rows
            if self.table.kind == "fact":
                self._collect_dates(built)
            ranges = built[self.table.key].to_numpy(zero_copy_only=False).astype(np.int64)
            ranges //= self.n
            hashes = row_hashes(field_texts(self.table, built))
            for r, h in zip(ranges.tolist(), hashes, strict=True):
                entry = digests.setdefault(r, [0, 0])
                entry[0] += 1
                entry[1] += h

        copy_source(self.source, self.model, on_chunk)
        return digests

    def _note_skipped(self, keys: set[int]) -> None:
        if keys:
            kind = (
                "refers to a dimension row set aside at the source, or is set aside itself"
                if self.table.kind == "fact"
                else "set aside at the source (the star cannot hold it)"
            )
            self.verdict.note(kind, sorted(keys), self.show)

    def warehouse_digests(self) -> dict[int, list[int]]:
        t = self.table
        name, key = quote(t.name), quote(t.key)
        live = f"{quote(star.SOURCE_DELETED_AT)} IS NULL"
        cols = ", ".join(quote(c) for c in t.column_names)
        if t.kind == "fact":
            current = (
                f"SELECT DISTINCT ON ({key}) {cols} FROM {name} WHERE {live}"  # noqa: S608  # nosec B608
                f" ORDER BY {key}, {quote(star.CAPTURE_SEQ)} DESC,"
                f" last_updated_date DESC, last_updated_time DESC"
            )
        else:
            current = f"SELECT {cols} FROM {name} WHERE {live}"  # noqa: S608  # nosec B608
        rows = self.warehouse.run(
            f"SELECT {range_sql('w.' + key, self.n)} AS r, count(*), sum({hash_sql(t)})"  # noqa: S608  # nosec B608
            f" FROM ({current}) w GROUP BY 1"
        )
        [[all_rows, marked]] = self.warehouse.run(
            f"SELECT count(*), count(*) FILTER (WHERE NOT ({live})) FROM {name}"  # noqa: S608  # nosec B608
        )
        self.verdict.all_rows, self.verdict.marked_rows = int(all_rows), int(marked)
        return {int(r): [int(c), int(s)] for r, c, s in rows}

    # pass 2: the ranges whose digests differ, row by row

    def compare_range(self, r: int) -> None:
        lo, hi = r * self.n, (r + 1) * self.n
        key = quote(self.model.key)
        parts: list[Expected] = []
        copy_source(
            self.source,
            self.model,
            lambda rows: parts.append(self.expected(rows)),
            f"s.{key} >= {lo} AND s.{key} < {hi}",
        )
        source_keys = {int(k) for p in parts for k in p.source_keys}
        skipped = {k for p in parts for k in p.skipped}
        expected = {k: texts for p in parts for k, texts in self._texts_by_key(p.rows)}
        stored = self._warehouse_rows(lo, hi)
        names = self.table.column_names
        is_fact = self.table.kind == "fact"
        version = [names.index(c) for c in ("last_updated_date", "last_updated_time") if is_fact]

        for k, want in sorted(expected.items()):
            if k in skipped:
                continue
            have = stored.get(k, [])
            if is_fact:  # the source's current version among the history
                have = [h for h in have if all(h[1][i] == want[i] for i in version)]
            if not have:
                self.verdict.add(VERSION_MISSING if is_fact else MISSING, k, (), self.show)
                continue
            live, texts = have[0]
            if not live:
                self.verdict.add(MARKED, k, (), self.show)
            differ = tuple(n for n, a, b in zip(names, texts, want, strict=True) if a != b)
            if differ:
                self.verdict.add(DIFFERS, k, differ, self.show)
        for k, rows in sorted(stored.items()):
            if k not in source_keys and any(live for live, _ in rows):
                self.verdict.add(NOT_MARKED, k, (), self.show)

    def _texts_by_key(self, rows: pa.Table) -> Iterable[tuple[int, tuple[str, ...]]]:
        columns = [t.to_pylist() for t in field_texts(self.table, rows)]
        for i, k in enumerate(rows[self.table.key].to_pylist()):
            yield k, tuple(c[i] for c in columns)

    def _warehouse_rows(self, lo: int, hi: int) -> dict[int, list[tuple[bool, tuple[str, ...]]]]:
        t = self.table
        key = quote(t.key)
        fields = ", ".join(field_sql(c) for c in t.columns)
        rows = self.warehouse.run(
            f"SELECT w.{key}, w.{quote(star.SOURCE_DELETED_AT)} IS NULL, {fields}"  # noqa: S608  # nosec B608
            f" FROM {quote(t.name)} w WHERE w.{key} >= {lo} AND w.{key} < {hi}"
            f" ORDER BY w.{key}, w.{quote(star.CAPTURE_SEQ)} DESC"
        )
        out: dict[int, list[tuple[bool, tuple[str, ...]]]] = {}
        for k, live, *texts in rows:
            out.setdefault(int(k), []).append((bool(live), tuple(texts)))
        return out

    def _collect_dates(self, built: pa.Table) -> None:
        for column, target in self.table.references:
            if target == star.DIM_DATE.name:
                self.dates.update(pc.unique(built[column]).drop_null().to_pylist())

    def run(self, progress: Callable[[str], None]) -> TableVerdict:
        self.load_parent()
        # The warehouse digests its side while this process digests the source's: the two
        # servers work at once (the waiting thread holds no GIL), each on its own connection.
        with ThreadPoolExecutor(max_workers=1) as pool:
            warehouse_side = pool.submit(self.warehouse_digests)
            mine = self.source_digests()
            theirs = warehouse_side.result()
        self.verdict.warehouse_rows = sum(c for c, _ in theirs.values())
        ranges = sorted(set(mine) | set(theirs))
        self.verdict.ranges = len(ranges)
        differing = [r for r in ranges if mine.get(r) != theirs.get(r)]
        self.verdict.reread = len(differing)
        if differing:
            progress(f"  {self.table.name}: {len(differing)} of {len(ranges)} range(s) differ")
        for r in differing:
            self.compare_range(r)
        return self.verdict


def check_calendar(warehouse: Connection, dates: set[date], show: int) -> TableVerdict:
    """Every referenced date is in dim_date, and every dim_date row has its calendar
    attributes (``totes.star.dates.calendar``, the remodelling's own)."""
    table = star.DIM_DATE
    verdict = TableVerdict(table.name)
    fields = ", ".join(field_sql(c) for c in table.columns)
    rows = warehouse.run(f"SELECT w.date_id, {fields} FROM dim_date w ORDER BY 1")  # noqa: S608  # nosec B608
    stored = {d: tuple(texts) for d, *texts in rows}
    verdict.all_rows = verdict.warehouse_rows = len(stored)
    verdict.ranges = 1  # small: compared row by row, whole
    verdict.source_rows = len(dates)
    every = sorted(dates | set(stored))
    if every:
        days = calendar(pa.array(every, pa.date32()))
        built = conform({c: days[c] for c in table.arrow_schema.names}, table)
        texts = [t.to_pylist() for t in field_texts(table, built)]
        for i, d in enumerate(built["date_id"].to_pylist()):
            want = tuple(c[i] for c in texts)
            have = stored.get(d)
            if have is None:
                if d in dates:
                    verdict.add(DATE_MISSING, d, (), show)
                continue
            differ = tuple(
                n for n, a, b in zip(table.column_names, have, want, strict=True) if a != b
            )
            if differ:
                verdict.add(DATE_WRONG, d, differ, show)
    return verdict


# -- the whole warehouse ----------------------------------------------------------------------


def check_migrated(warehouse: Connection, where: str) -> None:
    try:
        done = {int(v) for [v] in warehouse.run("SELECT version FROM schema_migrations")}
    except DatabaseError:  # no ledger of migrations at all: not a warehouse of ours
        raise TotesError(f"{where} has no schema_migrations table: is it the warehouse?") from None
    missing = [f"{m.version:04d}_{m.name}" for m in available() if m.version not in done]
    if missing:
        raise TotesError(
            f"the warehouse at {where} lacks migration(s) {', '.join(missing)}:"
            " run `python -m totes warehouse migrate --url ...` (verify never writes)"
        )


def verify(
    source: Connection,
    warehouse: Connection,
    *,
    range_keys: int = RANGE_KEYS,
    show: int = SHOW,
    progress: Callable[[str], None] = lambda _: None,
) -> Verdict:
    """Compare every warehouse table with the source; see the module docstring."""
    started = time.monotonic()
    check_schema(source)
    verdict = Verdict(range_keys=range_keys)
    gate = Gate()
    dates: set[date] = set()
    with snapshot(source), snapshot(warehouse):
        for table in star.STAR_TABLES:
            if not table.tracked:
                continue
            check = TableCheck(source, warehouse, table, gate, range_keys, show)
            verdict.tables.append(check.run(progress))
            dates |= check.dates
            progress(f"  {table.name}: checked, {time.monotonic() - started:.1f} s")
        calendar_verdict = check_calendar(warehouse, dates, show)
    verdict.tables.insert(0, calendar_verdict)
    verdict.seconds = time.monotonic() - started
    return verdict


def _in_schema(schema: str) -> str:
    return "" if schema == DEFAULT_WAREHOUSE_SCHEMA else f" (schema {schema})"


def command(args) -> int:
    """``python -m totes warehouse verify --source-url URL --warehouse-url URL``: exit 0 when
    the warehouse matches the source, 1 on any difference (named by table and key)."""
    src_creds = DbCredentials.from_url(args.source_url)
    wh_creds = DbCredentials.from_url(args.warehouse_url)
    source = connect(src_creds, application_name="totes-verify")
    try:
        warehouse = connect(wh_creds, application_name="totes-verify", search_path=args.schema)
    except Exception:
        source.close()
        raise
    try:
        for con in (source, warehouse):
            set_socket_timeout(con, STATEMENT_SECONDS)
        check_migrated(warehouse, wh_creds.where)
        print(
            f"verifying the warehouse {wh_creds.where}{_in_schema(args.schema)} against the"
            f" source {src_creds.where}"
            f" (digest ranges of {args.range_keys:,} keys)",
            flush=True,
        )
        try:
            verdict = verify(
                source,
                warehouse,
                range_keys=args.range_keys,
                show=args.show,
                progress=lambda line: print(line, file=sys.stderr, flush=True),
            )
        except SchemaDrift as exc:
            raise SchemaDrift(f"source {src_creds.where}: {exc}") from None
    finally:
        source.close()
        warehouse.close()
    print(verdict.format(), flush=True)
    return 1 if verdict.differences else 0
