"""Where a run starts from: the capture state the lake holds, read so that damage to the lake
is named and set aside instead of stopping every later cycle.

The state pointer (``state/latest.json``, written after each manifest) is read first: one
request however old the lake. If it is missing, damaged, or names a state the source has not
reached yet (a forged or foreign object: its snapshot lies in the source's future), the
manifests are read newest first and the first sound capture state wins; each damaged or
foreign object on the way is logged by key with what is wrong (never its content) and
counted. Starting from an older state is always safe: the run reads again what that state had
not captured, and the warehouse stores each version once. A manifest written before capture by
commit order (no ``capture``) means one full capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from totes.extract.capture import CaptureState, Snapshot
from totes.lake import STATE_KEY, Lake
from totes.observability import logger


@dataclass
class StartingPoint:
    state: CaptureState | None
    manifest_key: str | None = None
    # Objects passed over: (object key, what is wrong with it).
    passed_over: list[tuple[str, str]] = field(default_factory=list)
    legacy: bool = False


def _from_the_future(state: CaptureState, current: Snapshot) -> bool:
    return state.snapshot.xmin > current.xmax


def _parse(capture: object) -> CaptureState:
    if not isinstance(capture, dict):
        raise ValueError("no capture state")
    return CaptureState.from_json(capture)


def starting_point(lake: Lake, current: Snapshot) -> StartingPoint:
    """The capture state this run starts from (None: capture everything)."""
    point = StartingPoint(None)
    try:
        pointer = lake.get_state()
    except (ValueError, ClientError) as exc:
        pointer = None
        point.passed_over.append((STATE_KEY, f"unreadable: {type(exc).__name__}"))
    if pointer is not None:
        try:
            state = _parse(pointer.get("capture"))
        except (ValueError, KeyError, TypeError) as exc:
            point.passed_over.append((STATE_KEY, f"malformed capture state: {exc}"))
        else:
            if not _from_the_future(state, current):
                point.state = state
                point.manifest_key = str(pointer.get("manifest_key") or "") or None
                return _logged(point)
            point.passed_over.append((STATE_KEY, "its snapshot is ahead of the source"))
    for key in reversed(lake.manifest_keys()):
        try:
            manifest = lake.get_manifest(key)
        except (ValueError, TypeError, KeyError) as exc:
            point.passed_over.append((key, f"unreadable manifest: {type(exc).__name__}"))
            continue
        capture = manifest.extra.get("capture") if isinstance(manifest.extra, dict) else None
        if capture is None:
            if manifest.stage == "raw" and manifest.batch_id[:1].isdigit():
                point.legacy = True  # a window batch: capture everything once
                point.manifest_key = key
                return _logged(point)
            point.passed_over.append((key, "not a raw manifest of this pipeline"))
            continue
        try:
            state = _parse(capture)
        except (ValueError, KeyError, TypeError) as exc:
            point.passed_over.append((key, f"malformed capture state: {exc}"))
            continue
        if _from_the_future(state, current):
            point.passed_over.append((key, "its snapshot is ahead of the source"))
            continue
        point.state, point.manifest_key = state, key
        return _logged(point)
    return _logged(point)


def _logged(point: StartingPoint) -> StartingPoint:
    for key, problem in point.passed_over:
        logger.error(
            "lake object passed over as capture state", extra={"key": key, "problem": problem}
        )
    return point
