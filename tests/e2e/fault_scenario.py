"""The fault scenario run as its own process (``python fault_scenario.py``) by
``test_structured_output.py``: everything our code and its connections write to stdout and
stderr must be JSON, one object per line, on the Lambda runtime's Python.

Faults, each healed by the next cycle: the source refusing connections (ingest fails three
times), the warehouse refusing them (loads fail to the failure queue, then are redriven) and a
load's connection killed inside its transaction (pg8000's connection dropped mid-batch). The
emulator's own request log (werkzeug) is not ours and is turned down, as ``make demo`` does,
and so is the embedded PostgreSQL library's warning about the machine's runtime directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings

from totes.db import connect
from totes.warehouse import facts
from totes_tools.local.aws import StackNames, aws_environment, moto_server
from totes_tools.local.chain import LocalChain
from totes_tools.local.postgres import embedded_postgres
from totes_tools.source.generator import generate
from totes_tools.source.simulator import Simulator


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # The embedded PostgreSQL's library (a local stand-in, never in Lambda) warns about the
    # machine's XDG_RUNTIME_DIR; pyproject's pytest settings ignore the same warning.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    outcome: dict[str, object] = {}
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(embedded_postgres())
        endpoint = stack.enter_context(moto_server())
        stack.enter_context(aws_environment(endpoint))
        source = cluster.create_database("fault_src")
        warehouse = cluster.create_database("fault_wh")
        with contextlib.closing(connect(source)) as con:
            generate(con, 80, seed=3)
        chain = LocalChain(
            endpoint, StackNames(), source, warehouse, env={"INGEST_MAX_BATCH_ROWS": "300"}
        )
        chain.prepare()

        with cluster.refusing_connections(source):
            outcome["source_down"] = [f.stage for f in chain.run_cycle().failures]
        with cluster.refusing_connections(warehouse):
            outcome["warehouse_down"] = sorted({f.stage for f in chain.run_cycle().failures})
        outcome["redriven"] = chain.run_cycle().replayed

        merge_fact, killed = facts.merge_fact, []

        def merge_then_lose_the_connection(con, batch, seq, table, *args, **kwargs):
            result = merge_fact(con, batch, seq, table, *args, **kwargs)
            if not killed:
                killed.append(batch)
                con.run("SELECT pg_terminate_backend(pg_backend_pid())")
            return result

        facts.merge_fact = merge_then_lose_the_connection
        with contextlib.closing(connect(source)) as con:
            simulator = Simulator(con, seed=5)
            for _ in range(20):
                simulator.step()
        outcome["killed_load_ok"] = chain.run_cycle().ok and bool(killed)
        facts.merge_fact = merge_fact
        outcome["final_ok"] = chain.run_cycle().ok
    print(json.dumps({"fault_scenario": outcome}), flush=True)


if __name__ == "__main__":
    main()
