"""The manifest checks transform and load make before they trust a manifest (issue 14, M4 and
L3; ``totes.manifest_checks``): the manifests ingest and transform write pass, and each forged
or damaged one is refused naming what is wrong. Manifests go through JSON, as the stages read
them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from totes.lake import Manifest, ManifestFile, batch_id_for, data_key, manifest_key
from totes.manifest_checks import (
    CLOCK_TOLERANCE,
    ManifestRefused,
    capture,
    key_problem,
    parse_hi_utc,
    problems,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SEQ = 4711
BATCH = batch_id_for(SEQ, 1)  # the second part of capture 4711
OTHER = batch_id_for(SEQ - 1)
LEGACY = "20241115T120000000000-000"
HI_UTC = "2025-03-01T11:59:58.123456+00:00"


def raw_manifest(batch_id: str = BATCH, **extra) -> dict:
    """A raw manifest as ingest writes it: parts of a table, a deletions file, the capture."""
    files = [
        ManifestFile("sales_order", data_key("raw", "sales_order", batch_id, part), 100, "f1", 9)
        for part in range(3)
    ] + [ManifestFile("deleted_keys", data_key("raw", "deleted_keys", batch_id), 2, "f2", 5)]
    seq = {"capture_seq": int(batch_id[1:20])} if batch_id.startswith("c") else {}
    manifest = Manifest(
        batch_id, "raw", None, "2025-03-01 11:59:58.123", tuple(files),
        extra={"hi_utc": HI_UTC, "capture": {"seq": SEQ}, "part": 1, "parts": 2, **seq, **extra},
    )  # fmt: skip
    return json.loads(manifest.to_json())


def processed_manifest(batch_id: str = BATCH, **extra) -> dict:
    """A processed manifest as transform writes it (one file per star table, part 0)."""
    files = tuple(
        ManifestFile(table, data_key("processed", table, batch_id), 10, "f", 7)
        for table in ("dim_date", "dim_staff", "fact_sales_order")
    )
    raw = Manifest.from_json(json.dumps(raw_manifest(batch_id)))
    manifest = Manifest(
        batch_id, "processed", None, raw.window_hi, files, source_batch_id=batch_id,
        extra={**raw.extra, "set_aside": {"dim_design": [3, 1]}, "quarantined_rows": {}, **extra},
    )  # fmt: skip
    return json.loads(manifest.to_json())


def check(data: dict, stage: str, key: str | None = None, now: datetime = NOW) -> list[str]:
    manifest = Manifest.from_json(json.dumps(data))
    return problems(manifest, key or manifest_key(data["batch_id"]), stage, now)


@pytest.mark.parametrize("batch_id", [BATCH, LEGACY])
def test_what_ingest_and_transform_write_is_trusted(batch_id):
    assert check(raw_manifest(batch_id), "raw") == []
    assert check(processed_manifest(batch_id), "processed") == []


def test_a_raw_batch_without_files_is_trusted_a_processed_one_never():
    """Ingest writes a raw batch with no files when only its key sets changed; transform
    publishes nothing for a batch without rows, so an empty processed manifest is forged."""
    raw, processed = raw_manifest(), processed_manifest()
    raw["files"] = processed["files"] = []

    assert check(raw, "raw") == []
    assert check(processed, "processed") == [
        "it lists no files: transform publishes no processed manifest for a batch without"
        " rows, so this one is not transform's (it is not recorded as loaded)"
    ]


@pytest.mark.parametrize("stage", ["raw", "processed"])
def test_content_naming_another_batch_is_refused(stage):
    """A copy of another batch's manifest put at this batch's key: its id, each of its files
    and its capture sequence are named."""
    data = (raw_manifest if stage == "raw" else processed_manifest)(OTHER)
    prefix = "raw" if stage == "raw" else "processed"

    source = [f"it names source batch {OTHER!r}, not {BATCH!r}"] if stage == "processed" else []

    assert check(data, stage, key=manifest_key(BATCH)) == [
        f"it holds batch {OTHER!r}, its key names {BATCH!r}",
        *source,
        *(
            f"file {f['key']!r} ({f['rows']} rows) is not one of this batch's"
            f" ({prefix}/<table>/{BATCH}/part-NNNN.parquet)"
            for f in data["files"]
        ),
        f"capture_seq {SEQ - 1} is not the capture sequence its batch id carries ({SEQ};"
        " 0 or none for a batch from before capture by commit order)",
    ]


@pytest.mark.parametrize(
    "key",
    [
        "manifests/evil.json",
        "manifests/../c0000000000000004711-001.json",
        "manifests/c0000000000000004711-1000.json",
        "manifests/c4711-001.json",
        "manifests/20241115T120000000000-000.json.json",
    ],
)
def test_a_key_that_names_no_batch_is_refused_whatever_the_content(key):
    batch_id = key.removeprefix("manifests/").removesuffix(".json")
    data = raw_manifest()
    data["batch_id"] = batch_id
    data["files"] = []

    found = check(data, "raw", key=key)

    assert found[0].startswith(f"its key does not name a batch: {batch_id!r} is neither")
    assert key_problem(manifest_key(BATCH)) is None
    assert key_problem("raw/x.json") == "it is not a manifest key (manifests/<batch id>.json)"


def file_entry(key: str, table: str = "sales_order", **fields) -> dict:
    return {"table": table, "key": key, "rows": 1, "fingerprint": "f", "bytes": 1, **fields}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        # another batch's file, and this batch's file of the other stage
        (file_entry(data_key("raw", "sales_order", OTHER)), "is not one of this batch's"),
        (file_entry(data_key("processed", "sales_order", BATCH)), "is not one of this batch's"),
        # near misses of the deterministic key
        (file_entry(f"raw/sales_order/{BATCH}/part-0000.parquet.x"), "is not one of"),
        (file_entry(f"raw/sales_order/{BATCH}/part-00001.parquet"), "is not one of"),
        (file_entry(f"raw/sales_order/{BATCH}/../{OTHER}/part-0000.parquet"), "is not one of"),
        (file_entry(f"raw/sales_order/{BATCH}/extra/part-0000.parquet"), "is not one of"),
        (file_entry(f"raw/staff/{BATCH}/part-0000.parquet"), "is not one of"),  # table differs
        (file_entry(f"raw/a/{OTHER}/x/{BATCH}/part-0000.parquet", f"a/{OTHER}/x"), "is not one"),
        (file_entry(f"raw/Staff/{BATCH}/part-0000.parquet", "Staff"), "is not one of"),
        # counts that are not counts, names that are not names
        (file_entry(data_key("raw", "sales_order", BATCH, 7), rows=-1), "is not one of"),
        (file_entry(data_key("raw", "sales_order", BATCH, 7), rows="50"), "wrong kind"),
        (file_entry(data_key("raw", "sales_order", BATCH, 7), rows=True), "wrong kind"),
        (file_entry(data_key("raw", "sales_order", BATCH, 7), bytes=None), "wrong kind"),
        (file_entry(data_key("raw", "sales_order", BATCH, 7), table=None), "wrong kind"),
        # listed twice
        (file_entry(data_key("raw", "sales_order", BATCH, 0), rows=100, bytes=9), "listed twice"),
    ],
)
def test_a_file_that_is_not_the_batchs_deterministic_key_is_refused(entry, message):
    data = raw_manifest()
    data["files"].append(entry)

    [problem] = check(data, "raw")

    assert message in problem
    assert problem.startswith(("file ", "file entry "))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stage": "processed"}, "it is a 'processed' manifest, not a raw one"),
        ({"version": 2}, "it is manifest version 2, not 1"),
        ({"window_hi": 5}, "window_hi is not a string or window_lo is neither a string nor null"),
        (
            {"window_lo": ["x"]},
            "window_hi is not a string or window_lo is neither a string nor null",
        ),
        ({"source_batch_id": OTHER}, f"it names source batch {OTHER!r}, not {BATCH!r}"),
        ({"extra": ["x"]}, "extra must be a JSON object: ['x']"),
    ],
)
def test_fields_of_the_wrong_stage_version_or_kind_are_refused(change, message):
    data = {**raw_manifest(), **change}

    assert check(data, "raw") == [message]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"capture_seq": SEQ + 1}, f"capture_seq {SEQ + 1} is not the capture sequence its"),
        ({"capture_seq": 0}, "capture_seq 0 is not the capture sequence its batch id carries"),
        ({"capture_seq": -1}, "capture_seq must be a non-negative integer: -1"),
        ({"capture_seq": True}, "capture_seq must be a non-negative integer: True"),
        ({"capture_seq": "4711"}, "capture_seq must be a non-negative integer: '4711'"),
        ({"capture_seq": 2**63}, f"capture_seq must be a non-negative integer: {2**63}"),
        ({"set_aside": {"fact_payment": [1]}}, "set_aside must map dimension tables ["),
        ({"set_aside": {"dim_date": [1]}}, "set_aside must map dimension tables ["),
        ({"set_aside": ["dim_design"]}, "set_aside must map dimension tables ["),
        ({"set_aside": {"dim_design": ["1"]}}, "set_aside dim_design must be a list of integer"),
        ({"set_aside": {"dim_design": [True]}}, "set_aside dim_design must be a list of integer"),
        ({"set_aside": {"dim_design": [2**31]}}, "set_aside dim_design must be a list of integ"),
        ({"set_aside": {"dim_design": 3}}, "set_aside dim_design must be a list of integer"),
    ],
)
def test_malformed_capture_fields_are_refused(extra, message):
    [problem] = check(processed_manifest(**extra), "processed")

    assert problem.startswith(message)


def test_a_batch_from_before_capture_order_carries_no_capture_sequence():
    assert check(processed_manifest(LEGACY, capture_seq=0), "processed") == []
    [problem] = check(processed_manifest(LEGACY, capture_seq=SEQ), "processed")
    assert problem.startswith(f"capture_seq {SEQ} is not the capture sequence its batch id carries")


@pytest.mark.parametrize(
    "hi_utc",
    [
        "now", "infinity", "-infinity", "epoch", "today", "", "2025-03-01",
        "2025-03-01T12:00:00",  # no time zone: Python and PostgreSQL would read it differently
        "2025-03-01T12:00:00+01:00",  # not UTC
        "2025-13-01T12:00:00+00:00", "2025-03-01T12:00:00.1234567+00:00",
        "20250301T120000Z", "2025-03-01T12:00:00+00:00 ", 1740830400, ["2025"],
    ],
)  # fmt: skip
def test_a_malformed_hi_utc_is_refused(hi_utc):
    """L3: 'now' and 'infinity' are times to PostgreSQL, not to the load's reporting after the
    commit; every stage refuses them first."""
    for stage, data in (("raw", raw_manifest), ("processed", processed_manifest)):
        [problem] = check(data(hi_utc=hi_utc), stage)
        assert problem == (
            f"hi_utc must be an ISO time in UTC like 2024-11-15T12:00:00+00:00: {hi_utc!r}"
        )
    with pytest.raises(ManifestRefused):
        capture({"hi_utc": hi_utc})


@pytest.mark.parametrize(
    "hi_utc", ["2025-03-01T12:00:00Z", "2025-03-01 12:00:00-00:00", "0001-01-01T00:00:00+00:00"]
)
def test_utc_in_any_iso_spelling_is_a_capture_time(hi_utc):
    assert check(processed_manifest(hi_utc=hi_utc), "processed") == []
    assert parse_hi_utc(hi_utc).utcoffset() == timedelta(0)


def test_a_capture_time_ahead_of_the_clock_is_refused():
    """A manifest dated 9999 would hide a stale warehouse behind a fresh-looking capture."""
    edge = (NOW + CLOCK_TOLERANCE).isoformat()
    assert check(processed_manifest(hi_utc=edge), "processed") == []

    for hi_utc in ((NOW + CLOCK_TOLERANCE + timedelta(seconds=1)).isoformat(),
                   "9999-12-31T23:59:59.999999+00:00"):  # fmt: skip
        [problem] = check(processed_manifest(hi_utc=hi_utc), "processed")
        assert problem == (
            f"hi_utc {hi_utc!r} is ahead of the clock ({NOW.isoformat()}):"
            " a capture cannot have happened yet"
        )


def test_capture_reads_the_fields_load_trusts_and_nothing_else():
    assert capture(None) == capture({}) == capture({"set_aside": None})
    found = capture({"capture_seq": 7, "hi_utc": HI_UTC, "set_aside": {"dim_design": [3, 1, 3]}})
    assert (found.seq, found.hi_utc, found.set_aside) == (7, HI_UTC, {"dim_design": [1, 3]})


def test_a_long_forged_value_is_quoted_cut_short():
    [problem] = check(processed_manifest(hi_utc="x" * 10_000), "processed")

    assert len(problem) < 200
    assert problem.endswith("xxx...")
