"""Extraction throughput and memory, measured on a generated totesys.

``python -m totes_tools.local.bench_extract throughput --scale 1000000`` generates a source (on an
embedded PostgreSQL unless ``--url`` names a populated one), then in the same run times
1. ``COPY (SELECT ...) TO STDOUT`` into typed Arrow chunks (the ingest path), one
   self-contained batch of every table, chunks dropped,
2. a plain ``SELECT *`` fetched whole through pg8000 (the naive baseline), per table,
3. a whole first ``ingest()`` run (closure SQL, Arrow, Parquet, bounded batches) into an S3
   stand-in that keeps only manifests,
and prints one JSON document of rows/s.

``python -m totes_tools.local.bench_extract memory --url URL`` runs one ``ingest()`` of a populated
source in this process and prints its peak RSS growth; the memory test runs it in a child
process for a small and a large source and compares.

Not part of the test suite: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import threading
import time
from dataclasses import dataclass, field

from totes.db import DbCredentials, connect
from totes.extract import capture, stream
from totes.extract.snapshot import snapshot
from totes.identifiers import quote
from totes.lake import MANIFEST_PREFIX, STATE_PREFIX
from totes.settings import IngestSettings
from totes.source.model import TABLES_BY_NAME

BIG_TABLES = ("sales_order", "purchase_order", "transaction", "payment")


class _NoSuchKey(Exception):
    """What a missing object raises, as boto3's ``s3.exceptions.NoSuchKey``."""


@dataclass
class ManifestOnlyS3:
    """An S3 client stand-in that counts data bytes and keeps only manifests and the capture
    state, so memory and time measure extraction, not an emulator holding every object."""

    objects: dict[str, bytes] = field(default_factory=dict)
    data_bytes: int = 0
    data_objects: int = 0

    class exceptions:
        NoSuchKey = _NoSuchKey

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_) -> dict:
        if Key.startswith((MANIFEST_PREFIX, STATE_PREFIX)):
            self.objects[Key] = Body
        else:
            self.data_bytes += len(Body)
            self.data_objects += 1
        return {}

    def get_object(self, Bucket: str, Key: str) -> dict:
        if Key not in self.objects:
            raise _NoSuchKey(Key)
        return {"Body": io.BytesIO(self.objects[Key])}

    def get_paginator(self, _name: str):
        objects = self.objects

        class _Pages:
            @staticmethod
            def paginate(Bucket: str, Prefix: str = "", **_):
                yield {"Contents": [{"Key": k} for k in sorted(objects) if k.startswith(Prefix)]}

        return _Pages()


def _rss_mb() -> float:
    """Resident set size now (Linux ``/proc``; this is local tooling, never run in Lambda)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


class RssSampler:
    """The highest RSS seen while the block runs, sampled every few milliseconds: the
    process-lifetime peak (``ru_maxrss``) would hide the run behind import-time peaks."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.baseline = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> RssSampler:
        self.baseline = self.peak = _rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def settings(
    max_batch_rows: int, chunk_rows: int, readers: int = 4, reader_driver: str | None = None
) -> IngestSettings:
    return IngestSettings(
        raw_bucket="bench",
        source_secret_id="unused",  # noqa: S106  # nosec B106 (a name; never read)
        max_batch_rows=max_batch_rows,
        chunk_rows=chunk_rows,
        readers=readers,
        reader_driver=reader_driver,
    )


def measure_ingest(
    creds: DbCredentials,
    max_batch_rows: int,
    chunk_rows: int,
    readers: int = 4,
    reader_driver: str | None = None,
) -> dict:
    """One first ingest run of everything: rows, batches, seconds and peak RSS growth."""
    from totes.stages.ingest_batch import ingest

    s3 = ManifestOnlyS3()
    with RssSampler() as rss:
        started = time.perf_counter()
        manifests = ingest(settings(max_batch_rows, chunk_rows, readers, reader_driver), creds, s3)
        seconds = time.perf_counter() - started
    rows = sum(sum(m.row_counts.values()) for m in manifests)
    return {
        "rows": rows,
        "batches": len(manifests),
        "files": s3.data_objects,
        "parquet_bytes": s3.data_bytes,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        "rss_before_mb": round(rss.baseline, 1),
        "peak_rss_growth_mb": round(rss.peak - rss.baseline, 1),
    }


def _copy_rate(con, table_name: str, chunk_rows: int) -> dict:
    """One window-only table (a fact table: no closure to publish) through COPY into typed
    Arrow chunks that are dropped (``make bench`` uses this for ``sales_order``)."""
    table = TABLES_BY_NAME[table_name]
    with snapshot(con):
        capture.publish(con, capture.Selection(capture.EVERYTHING))
        started = time.perf_counter()
        rows = stream.copy_table(con, table, chunk_rows, lambda chunk: None)
        seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}


def _copy_batch_rate(con, chunk_rows: int) -> dict:
    """One self-contained batch of everything (``stream.copy_batch``) into typed Arrow
    chunks that are dropped: the COPY path alone, all tables."""
    with snapshot(con):
        capture.publish(con, capture.Selection(capture.EVERYTHING))
        started = time.perf_counter()
        rows = stream.copy_batch(con, chunk_rows, lambda table, chunk: None)
        seconds = time.perf_counter() - started
    total = sum(rows.values())
    return {"rows": total, "seconds": round(seconds, 3), "rows_per_s": round(total / seconds)}


def _fetch_rate(con, table_name: str) -> dict:
    started = time.perf_counter()
    rows = len(con.run(f"SELECT * FROM {quote(table_name)}"))  # noqa: S608  # nosec B608 (model name)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}


def throughput(creds: DbCredentials, chunk_rows: int, max_batch_rows: int) -> dict:
    con = connect(creds, application_name="totes-bench")
    try:
        results = {
            "copy_to_arrow_all_tables": _copy_batch_rate(con, chunk_rows),
            "select_fetchall": {t: _fetch_rate(con, t) for t in BIG_TABLES},
        }
    finally:
        con.close()
    fetched = results["select_fetchall"]
    rows = sum(r["rows"] for r in fetched.values())
    seconds = sum(r["seconds"] for r in fetched.values())
    fetched["total"] = {"rows": rows, "rows_per_s": round(rows / seconds)}
    results["ingest_first_run"] = measure_ingest(creds, max_batch_rows, chunk_rows)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m totes_tools.local.bench_extract")
    parser.add_argument("mode", choices=("throughput", "memory"))
    parser.add_argument("--url", help="a populated totesys (else one is generated)")
    parser.add_argument("--scale", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--max-batch-rows", type=int, default=500_000)
    parser.add_argument("--readers", type=int, default=4, help="INGEST_READERS")
    parser.add_argument(
        "--reader-driver", choices=("adbc", "pg8000"), default=None, help="INGEST_READER_DRIVER"
    )
    args = parser.parse_args(argv)

    if args.url:
        result = _run(args, DbCredentials.from_url(args.url))
    else:
        from totes_tools.local.postgres import postgres_cluster
        from totes_tools.source.generator import generate

        with postgres_cluster() as cluster, cluster.database("bench_src") as creds:
            con = connect(creds)
            started = time.perf_counter()
            counts = generate(con, args.scale)
            con.close()
            result = {
                "source_rows": counts,
                "generate_seconds": round(time.perf_counter() - started, 1),
                **_run(args, creds),
            }
    # The memory mode's result is the last line (the child-process test reads it).
    print(json.dumps(result, indent=None if args.mode == "memory" else 1))
    return 0


def _run(args, creds: DbCredentials) -> dict:
    if args.mode == "memory":
        return measure_ingest(
            creds, args.max_batch_rows, args.chunk_rows, args.readers, args.reader_driver
        )
    return throughput(creds, args.chunk_rows, args.max_batch_rows)


if __name__ == "__main__":
    sys.exit(main())
