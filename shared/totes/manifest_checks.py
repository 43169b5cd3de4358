"""Whether a manifest may drive the stage it triggers: the checks transform (raw manifests) and
load (processed manifests) make before they trust one (issue 14, M4 and L3).

A manifest is the only object that starts the next stage, so a manifest that is copied,
forged or damaged must stop there, named, before anything is written under its batch id:

- its object key names a batch (``manifests/<batch id>.json``, ``lake.BATCH_ID``) and its
  content names the same batch, at the stage expected, in the manifest version this code reads;
- each file is a deterministic key of that batch in that stage's prefix
  (``lake.data_key(prefix, table, batch_id, part)``), listed once, with counts that are counts;
- a processed manifest lists at least one file: transform never publishes an empty one (a
  batch without rows has nothing to load), so ``files: []`` can only be forged or damaged, and
  recording it in the warehouse ledger would make load skip the genuine batch of that id;
- the capture fields the warehouse trusts (``capture_seq``, ``hi_utc``, ``set_aside``) are
  well formed (``capture``): a ``capture_seq`` the batch id carries (none for a batch from
  before capture by commit order), an ISO time in UTC that is not ahead of the clock, integer
  keys of dimension tables. Refused before any transaction, never after a commit.

Pure: the manifest, its key, the stage and the time are all it looks at. Messages name the
object and what is wrong, quoting manifest fields only (cut short), never a row of data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from totes.lake import (
    BATCH_ID,
    MANIFEST_VERSION,
    PROCESSED_PREFIX,
    RAW_PREFIX,
    Manifest,
    ManifestFile,
    batch_id_from_manifest_key,
    data_key,
)
from totes.star.model import SET_ASIDE, STAR_TABLES

# The prefix each stage's data files live under.
STAGE_PREFIXES = {"raw": RAW_PREFIX, "processed": PROCESSED_PREFIX}
# A table name as the models spell them (and nothing that could climb out of its prefix).
TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# The part number at the end of a data key; the key must then equal ``data_key`` exactly.
_PART = re.compile(r"/part-(?P<part>[0-9]{4,9})\.parquet$")
# hi_utc: what ingest writes (``datetime.isoformat`` of an aware UTC time), in a shape that
# Python and PostgreSQL read as the same instant ('now', 'infinity', 'epoch' are not times).
_ISO_UTC = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)
# How far a capture time may be ahead of this clock (the source's clock and Lambda's differ
# by seconds; anything beyond this is forged or broken, and would hide a stale warehouse).
CLOCK_TOLERANCE = timedelta(hours=1)
BIGINT_MAX = 2**63 - 1
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
# Dimension tables whose keys transform may set aside (load parks the facts pointing at them).
SET_ASIDE_TABLES = frozenset(t.name for t in STAR_TABLES if t.kind == "dimension" and t.tracked)
# The longest manifest value a message quotes.
_SHOWN = 120


class ManifestRefused(ValueError):
    """A manifest field the stage cannot trust; the message names the field and the problem."""


@dataclass(frozen=True)
class Capture:
    """What a manifest says about its batch's capture: the sequence in commit order (0 for
    batches from before capture by commit order), its time (ISO, UTC) and the dimension keys
    transform set aside."""

    seq: int
    hi_utc: str | None
    set_aside: dict[str, list[int]]


def show(value: object) -> str:
    """``repr`` of a manifest value, cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 3]}..."


def parse_hi_utc(value: object) -> datetime:
    """The capture time of ``hi_utc``; ``ManifestRefused`` unless it is an ISO time in UTC."""
    refused = ManifestRefused(
        f"hi_utc must be an ISO time in UTC like 2024-11-15T12:00:00+00:00: {show(value)}"
    )
    if not isinstance(value, str) or not _ISO_UTC.match(value):
        raise refused
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise refused from None
    offset = when.utcoffset()
    if offset is None or offset:
        raise refused
    return when


def capture(extra: object) -> Capture:
    """The capture fields of a manifest's ``extra``, or ``ManifestRefused`` naming the first
    that is malformed. Only the form is checked here; ``problems`` also checks them against
    the batch id and the clock."""
    if extra is None:
        extra = {}
    if not isinstance(extra, Mapping):
        raise ManifestRefused(f"extra must be a JSON object: {show(extra)}")
    seq = extra.get("capture_seq", 0)
    if type(seq) is not int or not 0 <= seq <= BIGINT_MAX:
        raise ManifestRefused(f"capture_seq must be a non-negative integer: {show(seq)}")
    hi_utc = extra.get("hi_utc")
    if hi_utc is not None:
        parse_hi_utc(hi_utc)
    raw = extra.get(SET_ASIDE) or {}
    if not isinstance(raw, dict) or set(raw) - SET_ASIDE_TABLES:
        named = sorted(map(str, raw)) if isinstance(raw, dict) else raw
        raise ManifestRefused(
            f"set_aside must map dimension tables {sorted(SET_ASIDE_TABLES)} to keys: {show(named)}"
        )
    set_aside: dict[str, list[int]] = {}
    for name, keys in raw.items():
        if not isinstance(keys, list) or any(
            type(k) is not int or not INT_MIN <= k <= INT_MAX for k in keys
        ):
            raise ManifestRefused(f"set_aside {name} must be a list of integer keys")
        if keys:
            set_aside[name] = sorted(set(keys))
    return Capture(seq, hi_utc, set_aside)


def key_problem(manifest_key: str) -> str | None:
    """What is wrong with the key a manifest was read from, None when it names a batch."""
    try:
        batch_id = batch_id_from_manifest_key(manifest_key)
    except ValueError:
        return "it is not a manifest key (manifests/<batch id>.json)"
    if not BATCH_ID.match(batch_id):
        return (
            f"its key does not name a batch: {show(batch_id)} is neither"
            " c<capture sequence, 19 digits>-<part, 3 digits> nor a window id"
        )
    return None


def problems(manifest: Manifest, manifest_key: str, stage: str, now: datetime) -> list[str]:
    """Everything that makes ``manifest`` (read from ``manifest_key``) unfit to drive the
    consumer of ``stage`` ("raw": transform, "processed": load); empty when it may be
    trusted. ``now`` (aware) bounds ``hi_utc``."""
    found: list[str] = []
    batch_id = batch_id_from_manifest_key(manifest_key)
    wrong_key = key_problem(manifest_key)
    if wrong_key:
        found.append(wrong_key)
    if not isinstance(manifest.batch_id, str) or manifest.batch_id != batch_id:
        found.append(f"it holds batch {show(manifest.batch_id)}, its key names {batch_id!r}")
    if manifest.stage != stage:
        found.append(f"it is a {show(manifest.stage)} manifest, not a {stage} one")
    if manifest.version != MANIFEST_VERSION:
        found.append(f"it is manifest version {show(manifest.version)}, not {MANIFEST_VERSION}")
    if not isinstance(manifest.window_hi, str) or not isinstance(manifest.window_lo, str | None):
        found.append("window_hi is not a string or window_lo is neither a string nor null")
    if manifest.source_batch_id not in (None, batch_id):
        found.append(f"it names source batch {show(manifest.source_batch_id)}, not {batch_id!r}")
    found.extend(_file_problems(manifest.files, stage, batch_id))
    if stage == "processed" and not manifest.files:
        found.append(
            "it lists no files: transform publishes no processed manifest for a batch without"
            " rows, so this one is not transform's (it is not recorded as loaded)"
        )
    found.extend(_capture_problems(manifest.extra, batch_id, now))
    return found


def _file_problems(files: object, stage: str, batch_id: str) -> list[str]:
    if not isinstance(files, tuple) or not all(isinstance(f, ManifestFile) for f in files):
        return ["files is not a list of file entries"]
    found: list[str] = []
    seen: set[str] = set()
    prefix = STAGE_PREFIXES[stage]
    for entry in files:
        kinds = (entry.table, entry.key, entry.fingerprint)
        counts = (entry.rows, entry.bytes)
        if not all(isinstance(v, str) for v in kinds) or any(type(n) is not int for n in counts):
            found.append(f"file entry {show(entry)} has fields of the wrong kind")
            continue
        part = _PART.search(entry.key)
        expected = (
            data_key(prefix, entry.table, batch_id, int(part["part"]))
            if part and TABLE_NAME.match(entry.table)
            else None
        )
        if entry.key != expected or entry.rows < 0 or entry.bytes < 0:
            found.append(
                f"file {show(entry.key)} ({entry.rows} rows) is not one of this batch's"
                f" ({prefix}/<table>/{batch_id}/part-NNNN.parquet)"
            )
        elif entry.key in seen:
            found.append(f"file {show(entry.key)} is listed twice")
        seen.add(entry.key)
    return found


def _capture_problems(extra: object, batch_id: str, now: datetime) -> list[str]:
    try:
        found = capture(extra)
    except ManifestRefused as exc:
        return [str(exc)]
    problems: list[str] = []
    sequence = int(batch_id[1:20]) if batch_id.startswith("c") and BATCH_ID.match(batch_id) else 0
    if found.seq != sequence:
        problems.append(
            f"capture_seq {found.seq} is not the capture sequence its batch id carries"
            f" ({sequence}; 0 or none for a batch from before capture by commit order)"
        )
    if found.hi_utc is not None and parse_hi_utc(found.hi_utc) > now + CLOCK_TOLERANCE:
        problems.append(
            f"hi_utc {show(found.hi_utc)} is ahead of the clock ({now.isoformat()}):"
            " a capture cannot have happened yet"
        )
    return problems
