"""The star a seeded raw batch yields, pinned by digest: a change to how transform computes it
(the gates, the remodelling, the Parquet it writes) must not change one row, value, type or
the row order (docs/transform.md "Cost per batch").

The batch is the generator's source at a small scale, made awkward on purpose: rows shuffled
and split over two files, extra versions of keys (newer, older, exact repeats), and values the
gates set aside (a text date that is not a date, a NULL where the star needs a value, a
reference to a row not in the batch, a dimension key with one bad version), plus deletions.

The digests were computed by the code before issue 16's per-batch work (session 23) and must
not move. If the star's meaning changes on purpose, print ``digests(star_of(seeded_batch()))``
and review why every table that moved did.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from test_lake import fresh_interpreter_prints

from totes import quality
from totes.lake import (
    RAW_PREFIX,
    Manifest,
    ManifestFile,
    data_key,
    parquet_bytes_to_table,
    schema_fingerprint,
    table_to_parquet_bytes,
)
from totes.source.model import DELETED_KEYS, DELETED_KEYS_SCHEMA, TABLES_BY_NAME
from totes.star.model import DELETED_KEYS as STAR_DELETED_KEYS
from totes.star.remodel import build_star, deleted_keys
from totes_tools.source.generator import Plan

BATCH = "20241115T120000000000-000"  # a legacy id: the manifest needs no capture fields
SEED = 23

EXPECTED = {
    "_problems": "9:d35835caec63d904150b",
    "_set_aside": "1:5606ea82f98f137edcda",
    "deleted_keys": "3:855cfadbf7c02ca9b948",
    "dim_counterparty": "19:3a9b0f51650381cfe031",
    "dim_currency": "3:05ebb8ae4f349e97d3ca",
    "dim_date": "15:b8d99d281b741329418a",
    "dim_design": "10:c94a8e31d977a09474cf",
    "dim_location": "29:6c99cfd8c90d965a76b8",
    "dim_payment_type": "4:16044e7e4f5c7dd0e4ba",
    "dim_staff": "19:f00df2198d9e04434e2e",
    "dim_transaction": "170:e3490279bddaa725eeef",
    "fact_payment": "202:c500d6bca0c579c40386",
    "fact_purchase_order": "59:ad126658301ed17f47e8",
    "fact_sales_order": "143:0a6fb2dc891ed571d91a",
}


def _generated(scale: int, seed: int) -> dict[str, pa.Table]:
    chunks: dict[str, list[pa.Table]] = {}
    for name, chunk in Plan(scale, seed, 10_000).tables():
        schema = TABLES_BY_NAME[name].arrow_schema
        nullable = pa.schema([f.with_nullable(True) for f in schema])
        chunks.setdefault(name, []).append(chunk.cast(nullable))
    return {name: pa.concat_tables(parts) for name, parts in chunks.items()}


def _with_versions(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    """Extra rows: a tenth of the rows again one second newer, a tenth one second older, a
    twentieth repeated exactly; then every row shuffled."""
    n = table.num_rows
    stamps = table["last_updated"]
    parts = [table]
    for shift, share in ((1, 10), (-1, 10), (0, 20)):
        picked = table.take(pa.array(rng.choice(n, size=max(1, n // share), replace=False)))
        if shift:
            moved = pc.add(picked["last_updated"], pa.scalar(shift * 1000, pa.duration("ms")))
            moved = moved.cast(stamps.type)
            picked = picked.set_column(
                picked.schema.get_field_index("last_updated"), "last_updated", moved
            )
        parts.append(picked)
    out = pa.concat_tables(parts)
    return out.take(pa.array(rng.permutation(out.num_rows)))


def _spoiled(name: str, table: pa.Table, rng: np.random.Generator) -> pa.Table:
    """A few values the gates set aside (each a different check)."""
    n = table.num_rows
    columns = {c: table[c].combine_chunks() for c in table.column_names}
    rows = rng.choice(n, size=min(3, n), replace=False)

    def put(column: str, row: int, value: object) -> None:
        values = columns[column].to_pylist()
        values[row] = value
        columns[column] = pa.array(values, columns[column].type)

    if name in ("sales_order", "payment"):
        date_column = "agreed_payment_date" if name == "sales_order" else "payment_date"
        put(date_column, int(rows[0]), "2024-02-30")
        put("counterparty_id", int(rows[1]), 999_999)  # not in the batch
    if name == "purchase_order":
        put("item_code", int(rows[0]), None)
    if name == "address":
        put("city", int(rows[0]), None)  # a counterparty embedding it goes aside too
    if name == "staff":
        put("email_address", int(rows[0]), None)
    return pa.table(columns, schema=table.schema)


def seeded_batch() -> tuple[Manifest, dict[ManifestFile, pa.Table]]:
    """The raw batch as transform reads it: a manifest and each file's table."""
    rng = np.random.default_rng(SEED)
    source = _generated(120, SEED)
    tables: dict[str, pa.Table] = {}
    for name in sorted(source):
        tables[name] = _spoiled(name, _with_versions(source[name], rng), rng)
    deleted = pa.table(
        {
            "table": ["sales_order", "design", "department", "no_such_table", "payment"],
            "key": [3, 2, 1, 7, 3],
        },
        schema=DELETED_KEYS_SCHEMA,
    )
    tables[DELETED_KEYS] = deleted
    files: dict[ManifestFile, pa.Table] = {}
    for name, table in tables.items():
        half = -(-table.num_rows // 2)
        for part in range(2):
            chunk = table.slice(part * half, half)
            key = data_key(RAW_PREFIX, name, BATCH, part)
            entry = ManifestFile(name, key, chunk.num_rows, schema_fingerprint(chunk.schema))
            files[entry] = parquet_bytes_to_table(table_to_parquet_bytes(chunk))
    manifest = Manifest(BATCH, "raw", None, "2024-11-15T12:00:00", tuple(files))
    return manifest, files


def star_of(batch: tuple[Manifest, dict[ManifestFile, pa.Table]]) -> dict[str, pa.Table]:
    """What transform writes for the batch: every star table and the deletions, each as the
    processed Parquet reads back."""
    gated = quality.gate(*batch)
    tables = build_star(gated.source)
    tables[STAR_DELETED_KEYS] = deleted_keys(gated.deleted)
    out = {name: parquet_bytes_to_table(table_to_parquet_bytes(t)) for name, t in tables.items()}
    out["_set_aside"] = pa.table(
        {"record": [json.dumps([gated.set_aside, gated.set_aside_rows], sort_keys=True)]}
    )
    out["_problems"] = pa.table(
        {"problem": [json.dumps(p.__dict__, sort_keys=True) for p in gated.problems]}
    )
    return out


def digest(table: pa.Table) -> str:
    """Schema (names, types, nullability) and every row in order."""
    h = hashlib.sha256(str(table.schema).encode())
    for row in table.to_pylist():
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return f"{table.num_rows}:{h.hexdigest()[:20]}"


def digests(star: dict[str, pa.Table]) -> dict[str, str]:
    return {name: digest(table) for name, table in sorted(star.items())}


def test_the_seeded_batch_reaches_every_gate_and_table():
    star = star_of(seeded_batch())
    checks = {json.loads(p)["check"] for p in star["_problems"]["problem"].to_pylist()}
    assert checks >= {
        quality.BAD_TEXT_DATE,
        quality.NULL_IN_REQUIRED_COLUMN,
        quality.DANGLING_REFERENCE,
        quality.PARENT_SET_ASIDE,
        quality.KEY_SET_ASIDE,
    }
    assert star[STAR_DELETED_KEYS].num_rows > 0
    assert all(t.num_rows for t in star.values())


def test_the_star_of_a_seeded_batch_is_what_it_was():
    assert digests(star_of(seeded_batch())) == EXPECTED


def test_remodelling_a_batch_does_not_start_arrow_s_query_engine():
    """Joins and the deletions' distinct pairs are lookups and sorts: ``Table.join`` and
    ``group_by`` import ``pyarrow.acero`` and ``pyarrow.dataset`` on first use (and pandas
    with them), in a cold transform's first batch (docs/transform.md "Cost per batch")."""
    code = (
        "import sys\n"
        "import pyarrow as pa\n"
        "from factories import full_batch\n"
        "from totes.source.model import DELETED_KEYS_SCHEMA\n"
        "from totes.star.remodel import build_star, deleted_keys\n"
        "star = build_star(full_batch())\n"
        "gone = pa.table({'table': ['staff', 'x'], 'key': [1, 2]}, schema=DELETED_KEYS_SCHEMA)\n"
        "assert deleted_keys(gone).num_rows == 1 and star['dim_staff'].num_rows == 1\n"
        "print(sorted(m for m in ('pyarrow.acero', 'pyarrow.dataset') if m in sys.modules))\n"
    )
    assert fresh_interpreter_prints(code).splitlines()[-1] == "[]"  # after a warning line


def test_a_cold_transform_never_imports_pandas(tmp_path):
    """Arrow's pandas shim imports pandas (about 0.13 s of CPU) the first time a Python value
    becomes an Arrow one; the transform builds its values from buffers (``totes.arrow_values``).
    The whole stage runs on the seeded batch (rows set aside, deletions) in a fresh process."""
    manifest, files = seeded_batch()
    (tmp_path / "manifest.json").write_text(manifest.to_json())
    for entry, table in files.items():
        path = tmp_path / entry.key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(table_to_parquet_bytes(table))
    code = (
        "import io, pathlib, sys\n"
        f"root = pathlib.Path({str(tmp_path)!r})\n"
        "class S3:\n"
        "    objects = {('raw', p.relative_to(root).as_posix()): p.read_bytes()\n"
        "               for p in root.rglob('*') if p.is_file()}\n"
        "    objects[('raw', 'manifests/"
        + BATCH
        + ".json')] = objects.pop(('raw', 'manifest.json'))\n"
        "    def put_object(self, Bucket, Key, Body, **_):\n"
        "        self.objects[(Bucket, Key)] = Body\n"
        "    def get_object(self, Bucket, Key, **_):\n"
        "        return {'Body': io.BytesIO(self.objects[(Bucket, Key)])}\n"
        "from totes.settings import TransformSettings\n"
        "from totes.stages.transform_batch import transform\n"
        "settings = TransformSettings('raw', 'processed', 'unused')\n"
        "result = transform('manifests/" + BATCH + ".json', settings, S3())\n"
        "assert result['status'] == 'processed' and result['quarantined_rows'], result\n"
        "print('pandas' in sys.modules)\n"
    )
    assert fresh_interpreter_prints(code).splitlines()[-1] == "False"
