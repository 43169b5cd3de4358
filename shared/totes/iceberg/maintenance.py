"""Table maintenance on a schedule: compaction of small files, snapshot expiry and removal of
files no snapshot references any more, table by table.

Every batch adds a few small files and snapshots to the tables it touches; left alone, a year
of five-minute batches is ~100,000 files per table and ever slower planning. Each run:

1. **compacts** the table's small data files (below three quarters of the target size) into
   files of about the target size: one commit replacing them (an ``overwrite`` snapshot with
   the same rows; pyiceberg writes no ``replace`` snapshots), marked ``totes.maintenance``;
   only small files are read, so the cost follows the new data, not the table;
2. **expires** snapshots older than the retention, always keeping the newest few (time travel
   and the batch-id summaries ``commit`` reads live in them);
3. **removes unreferenced files**: data files, manifests, manifest lists and metadata files
   under the table's location that no remaining snapshot or metadata log references, once
   they are older than the orphan age (so a commit still in flight, whose files are not
   referenced yet, is never touched). That covers the files expired snapshots alone held and
   those of commits that never landed (a crash between writing and committing).

A commit that loses a race with the loader is left for the next run (the loader's batch is
what matters); nothing here changes what a query returns.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow.fs as pafs
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan, PyArrowFileIO, _dataframe_to_data_files
from pyiceberg.table import FileScanTask, Table

from totes.iceberg.settings import IcebergSettings
from totes.iceberg.tables import all_tables

MAINTENANCE_PROPERTY = "totes.maintenance"
SMALL_FILE_SHARE = 0.75


@dataclass
class FileStats:
    files: int = 0
    bytes: int = 0
    rows: int = 0


@dataclass
class TableMaintenance:
    table: str
    before: FileStats = field(default_factory=FileStats)
    after: FileStats = field(default_factory=FileStats)
    snapshots_before: int = 0
    snapshots_expired: int = 0
    files_compacted: int = 0
    files_written: int = 0
    files_removed: int = 0
    bytes_removed: int = 0
    skipped: str = ""


def data_file_stats(table: Table) -> FileStats:
    """The live data files of the table's current snapshot."""
    stats = FileStats()
    if table.current_snapshot() is None:
        return stats
    for task in table.scan().plan_files():
        stats.files += 1
        stats.bytes += task.file.file_size_in_bytes
        stats.rows += task.file.record_count
    return stats


def maintain(
    catalog: Catalog,
    settings: IcebergSettings,
    now: datetime | None = None,
    names: list[str] | None = None,
) -> list[TableMaintenance]:
    """One maintenance run over every table (or ``names``)."""
    now = now or datetime.now(UTC)
    out = []
    for name in names or list(all_tables()):
        table = catalog.load_table((settings.database, name))
        report = TableMaintenance(name, before=data_file_stats(table))
        report.snapshots_before = len(table.snapshots())
        try:
            table = compact(table, settings.target_file_mb * 1024 * 1024, report)
            table = expire_snapshots(table, now, settings, report)
        except CommitFailedException:
            report.skipped = "a concurrent commit won; the next run retries"
            table = table.refresh()
        remove_unreferenced(table, now - timedelta(hours=settings.orphan_age_hours), report)
        report.after = data_file_stats(table)
        out.append(report)
    return out


def compact(table: Table, target_bytes: int, report: TableMaintenance) -> Table:
    """Rewrite the small data files into files of about ``target_bytes`` (on disk), in one
    commit; bins of fewer than two small files are left alone."""
    if table.current_snapshot() is None:
        return table
    small = [
        task
        for task in table.scan().plan_files()
        if task.file.file_size_in_bytes < SMALL_FILE_SHARE * target_bytes and not task.delete_files
    ]
    bins: list[list[FileScanTask]] = []
    current: list[FileScanTask] = []
    size = 0
    for task in sorted(small, key=lambda t: t.file.file_path):
        current.append(task)
        size += task.file.file_size_in_bytes
        if size >= target_bytes:
            bins.append(current)
            current, size = [], 0
    bins.append(current)
    bins = [b for b in bins if len(b) >= 2]
    if not bins:
        return table
    transaction = table.transaction()
    metadata = transaction.table_metadata
    schema = metadata.schema()
    key_names = [schema.find_column_name(i) for i in schema.identifier_field_ids]
    snapshot = transaction.update_snapshot(snapshot_properties={MAINTENANCE_PROPERTY: "compaction"})
    with warnings.catch_warnings(), snapshot.overwrite() as rewrite:
        warnings.simplefilter("ignore")
        rewrite.delete_by_predicate(AlwaysTrue())  # which manifests to look in; only ``group``s go
        for group in bins:
            rows = ArrowScan(metadata, table.io, schema, AlwaysTrue()).to_table(tasks=group)
            if key_names:  # sorted by the key: tighter file bounds, fewer files read per key
                rows = rows.sort_by([(name, "ascending") for name in key_names if name])
            written = _dataframe_to_data_files(
                table_metadata=metadata, df=rows, io=table.io, write_uuid=rewrite.commit_uuid
            )
            for data_file in written:
                rewrite.append_data_file(data_file)
                report.files_written += 1
            for task in group:
                rewrite.delete_data_file(task.file)
                report.files_compacted += 1
    return transaction.commit_transaction()


def expire_snapshots(
    table: Table, now: datetime, settings: IcebergSettings, report: TableMaintenance
) -> Table:
    """Expire the snapshots older than the retention, keeping the newest ``keep_snapshots``
    and every branch or tag head."""
    cutoff = now - timedelta(hours=settings.snapshot_retention_hours)
    newest = sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True)
    kept = {s.snapshot_id for s in newest[: settings.keep_snapshots]}
    kept |= {ref.snapshot_id for ref in table.metadata.refs.values()}
    expired = [
        s.snapshot_id
        for s in newest
        if s.snapshot_id not in kept and s.timestamp_ms < cutoff.timestamp() * 1000
    ]
    if not expired:
        return table
    table.maintenance.expire_snapshots().by_ids(expired).commit()
    report.snapshots_expired = len(expired)
    return table.refresh()


def referenced_files(table: Table) -> set[str]:
    """Every file a remaining snapshot or the metadata log needs, as paths (no scheme)."""
    io = table.io
    paths = {table.metadata_location}
    paths.update(entry.metadata_file for entry in table.metadata.metadata_log)
    for snapshot in table.snapshots():
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(io):
            paths.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                paths.add(entry.data_file.file_path)
    paths.update(s.statistics_path for s in table.metadata.statistics)
    return {PyArrowFileIO.parse_location(p)[2] for p in paths}


def remove_unreferenced(table: Table, older_than: datetime, report: TableMaintenance) -> None:
    """Delete the files under the table's location that nothing references and that were last
    written before ``older_than``."""
    io = table.io
    if not isinstance(io, PyArrowFileIO):
        report.skipped = report.skipped or "file IO cannot list; unreferenced files left"
        return
    scheme, netloc, root = PyArrowFileIO.parse_location(table.location())
    filesystem = io.fs_by_scheme(scheme, netloc)
    keep = referenced_files(table)
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    for info in filesystem.get_file_info(selector):
        if info.type != pafs.FileType.File or info.path in keep:
            continue
        if info.mtime is None or info.mtime.astimezone(UTC) >= older_than.astimezone(UTC):
            continue
        filesystem.delete_file(info.path)
        report.files_removed += 1
        report.bytes_removed += info.size or 0
