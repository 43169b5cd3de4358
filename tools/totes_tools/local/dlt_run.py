"""One dlt run, inside dlt's own environment (``.venv-dlt``, ``make bench-dlt``): copy the
totesys tables as they are into PostgreSQL, and print one JSON line of what it took.

``.venv-dlt/bin/python dlt_run.py SOURCE_SQLALCHEMY_URL DEST_URL WORKDIR FORMAT TABLE...``

dlt's ``sql_database`` source with the pyarrow backend (SQLAlchemy + psycopg2 reads), the
postgres destination with ``loader_file_format`` FORMAT: with ``parquet``, dlt loads through
the ADBC PostgreSQL driver (Arrow-native binary COPY). This file imports nothing of ours (it
runs where only dlt is installed); the table names come from the caller, which takes them from
the source model.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")


def main(argv: list[str]) -> int:
    import dlt  # type: ignore[import-not-found]  # only in .venv-dlt
    from dlt.sources.sql_database import sql_database  # type: ignore[import-not-found]

    source_url, dest_url, workdir, file_format, *tables = argv
    started = time.perf_counter()
    source = sql_database(credentials=source_url, table_names=tables, backend="pyarrow")
    pipeline = dlt.pipeline(
        pipeline_name="totes_dlt_bench",
        pipelines_dir=workdir,
        destination=dlt.destinations.postgres(credentials=dest_url),
        dataset_name="totesys_copy",
        progress=None,
    )
    phases = {}
    for phase, step in (
        ("extract", lambda: pipeline.extract(source, loader_file_format=file_format)),
        ("normalize", pipeline.normalize),
        ("load", pipeline.load),
    ):
        phase_started = time.perf_counter()
        info = step()
        phases[phase] = round(time.perf_counter() - phase_started, 3)
    counts = pipeline.last_trace.last_normalize_info.row_counts if pipeline.last_trace else {}
    rows = {k: v for k, v in counts.items() if not k.startswith("_dlt")}
    formats = {
        job.job_file_info.file_format
        for package in info.load_packages
        for job in package.jobs.get("completed_jobs", [])
    }
    print(
        json.dumps(
            {
                "format": file_format,
                "seconds": round(time.perf_counter() - started, 3),
                "phases": phases,
                "rows": sum(rows.values()),
                "rows_by_table": rows,
                "job_formats": sorted(formats),
                "dlt": dlt.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
