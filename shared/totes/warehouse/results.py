"""What merging a batch reports: rows staged, inserted and updated per table, and whether the
batch was loaded at all (a batch already in the ledger is acknowledged, not loaded again)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TableResult:
    staged: int
    inserted: int
    updated: int = 0

    @property
    def skipped(self) -> int:
        """Rows that changed nothing: versions already stored, older dimension versions,
        and repeats of a row within the batch."""
        return self.staged - self.inserted - self.updated


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
