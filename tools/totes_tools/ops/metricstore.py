"""The metrics a local run emitted, kept per run as JSON lines.

Each line is one datapoint: what a handler printed as EMF (namespace, name, dimensions, value,
unit, timestamp), or what AWS would have published about the run and the local chain emulates
(``AWS/Lambda`` Errors and Throttles per invocation, ``AWS/SQS`` depth and oldest-message age
of the failure queue per cycle). Every point carries its ``run`` and ``cycle`` (the chain's
cycles count on across runs that share a file), so a dashboard can be drawn from several
``python -m totes run`` invocations. A ``names`` line per run records the local resource names
the template's references stand for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_DIR_ENV = "TOTES_STATE_DIR"


def state_dir() -> Path:
    """Where local runs keep their files: ``$TOTES_STATE_DIR``, else ``.totes/`` in the
    checkout."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    from totes_tools.repository import repository_root

    return repository_root() / ".totes"


def default_metrics_path() -> Path:
    return state_dir() / "metrics.jsonl"


@dataclass(frozen=True)
class Datapoint:
    namespace: str
    name: str
    value: float
    dimensions: dict[str, str] = field(default_factory=dict)
    unit: str = ""
    time: float = 0.0  # epoch seconds (EMF timestamp, or when the chain measured it)
    cycle: int = 0
    run: str = ""
    source: str = "emf"  # "emf" (a handler printed it) or "emulated" (AWS would publish it)


def from_emf(
    text: str, *, cycle: int = 0, run: str = "", default_time: float = 0.0
) -> list[Datapoint]:
    """The datapoints in EMF lines (Powertools' output); other lines are ignored."""
    points: list[Datapoint] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            blob = json.loads(line)
        except ValueError:
            continue
        aws = blob.get("_aws") if isinstance(blob, dict) else None
        if not isinstance(aws, dict):
            continue
        when = aws.get("Timestamp")
        seconds = when / 1000 if isinstance(when, int | float) else default_time
        for directive in aws.get("CloudWatchMetrics", ()):
            dim_names = {d for group in directive.get("Dimensions", ()) for d in group}
            dims = {d: str(blob[d]) for d in sorted(dim_names) if d in blob}
            for definition in directive.get("Metrics", ()):
                values = blob.get(definition["Name"])
                for value in values if isinstance(values, list) else [values]:
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        points.append(
                            Datapoint(
                                directive.get("Namespace", ""),
                                definition["Name"],
                                float(value),
                                dims,
                                definition.get("Unit", ""),
                                seconds,
                                cycle,
                                run,
                            )
                        )
    return points


def append(path: Path, points: Iterable[Datapoint], names: dict[str, Any] | None = None) -> None:
    """Add datapoints (and, once per run, the run's local names) to the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        if names is not None:
            out.write(json.dumps({"names": names}, sort_keys=True) + "\n")
        for point in points:
            out.write(json.dumps(asdict(point), sort_keys=True) + "\n")


def read(path: Path) -> tuple[list[Datapoint], dict[str, Any]]:
    """Every datapoint of the file, and the local names of its newest run."""
    points: list[Datapoint] = []
    names: dict[str, Any] = {}
    for record in _records(path):
        if "names" in record:
            names = record["names"]
        else:
            points.append(Datapoint(**record))
    return points, names


def last_cycle(path: Path) -> int:
    """The highest cycle recorded (-1 for none), so a new run's cycles continue after it."""
    return max((r["cycle"] for r in _records(path) if "cycle" in r), default=-1)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        return
    with path.open() as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)
