"""``python -m totes source create`` and ``source simulate``: build a totesys database from the
real snapshot or the generator, and advance it like the live business.

Every failure an operator can cause (a malformed URL, an unreachable server, a database that
already holds tables, a snapshot file that does not match the schema, a database without the
totesys schema) raises a ``TotesError`` with a one-line message naming what is wrong; the CLI
prints it and exits 2. Passwords never appear in the output.
"""

from __future__ import annotations

import time
from collections import Counter

from totes.db import DbCredentials, connect
from totes.errors import ConfigurationError, SchemaDrift
from totes_tools.source.ddl import ensure_empty
from totes_tools.source.generator import generate
from totes_tools.source.simulator import Simulator
from totes_tools.source.snapshot import has_source_schema, load_tables, read_snapshot


def create(args) -> int:
    """Create the totesys schema in an empty database and fill it (snapshot or generator)."""
    creds = DbCredentials.from_url(args.url)
    tables = read_snapshot(args.snapshot) if args.snapshot else None  # fail before connecting
    if tables is None and args.scale < 1:
        raise ConfigurationError(f"--scale must be at least 1, got {args.scale}")
    con = connect(creds, application_name="totes-source-create")
    try:
        ensure_empty(con, creds.where)
        started = time.perf_counter()
        if tables is not None:
            counts = load_tables(con, tables)
            what = f"snapshot {args.snapshot}"
        else:
            counts = generate(con, args.scale, seed=args.seed)
            what = f"generated scale {args.scale:,} seed {args.seed}"
        elapsed = time.perf_counter() - started
    finally:
        con.close()
    total = sum(counts.values())
    print(f"created totesys in {creds.where} from {what}: {total:,} rows in {elapsed:.1f}s")
    for table, rows in counts.items():
        print(f"  {table:<15} {rows:>12,}")
    return 0


def simulate(args) -> int:
    """Run ``--steps`` steps of live activity, each committed on its own."""
    if args.steps < 1:
        raise ConfigurationError(f"--steps must be at least 1, got {args.steps}")
    creds = DbCredentials.from_url(args.url)
    con = connect(creds, application_name="totes-source-simulate")
    try:
        if not has_source_schema(con):
            raise SchemaDrift(
                f"{creds.where} has no totesys schema; run `python -m totes source create` first"
            )
        simulator = Simulator(con, seed=args.seed)
        inserted: Counter = Counter()
        updated: Counter = Counter()
        for _ in range(args.steps):
            step = simulator.step()
            inserted.update({t: len(ids) for t, ids in step["inserted"].items()})
            updated.update({t: len(ids) for t, ids in step["updated"].items()})
    finally:
        con.close()
    print(f"simulated {args.steps} step(s) on {creds.where}; last stamp {step['stamp']}")
    for table in sorted(set(inserted) | set(updated)):
        print(f"  {table:<15} +{inserted[table]:<8,} ~{updated[table]:,}")
    return 0
