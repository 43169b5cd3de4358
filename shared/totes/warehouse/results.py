"""What merging a batch reports, per table: rows staged, inserted, updated, parked and released,
rows marked and unmarked as deleted at the source, and whether the batch was loaded at all (a
batch already in the ledger is acknowledged, not loaded again)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class TableResult:
    staged: int
    inserted: int
    updated: int = 0
    # Facts of this batch set aside in the park: a dimension row they reference was set aside
    # by transform and is not in the warehouse.
    parked: int = 0
    # Parked facts (of earlier batches) moved into the table because their references resolve.
    released: int = 0
    # Keys this batch deleted, and the rows whose deletion mark (source_deleted_at) was set or
    # cleared by this batch (a key deleted, or one that came back).
    deleted_keys: int = 0
    marked: int = 0
    unmarked: int = 0

    @property
    def skipped(self) -> int:
        """Staged rows that changed nothing: versions already stored, older dimension versions,
        and repeats of a row within the batch."""
        return self.staged - self.inserted - self.updated - self.parked

    def plus(self, **counts: int) -> TableResult:
        """This result with ``counts`` added to its fields."""
        return replace(self, **{name: getattr(self, name) + n for name, n in counts.items()})


@dataclass(frozen=True)
class LoadResult:
    batch_id: str
    loaded: bool  # False: the ledger already held this batch, nothing was written
    tables: dict[str, TableResult] = field(default_factory=dict)

    def row_counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {**asdict(result), "skipped": result.skipped}
            for name, result in self.tables.items()
        }
