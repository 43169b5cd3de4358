"""The end-to-end fixtures: a local chain over fresh databases and a fresh stack per test.

The helper modules beside this file (``e2e_reference``) are put on ``sys.path`` here, since
pytest runs in importlib mode and does not do it itself.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

from totes_tools.local.aws import StackNames
from totes_tools.local.chain import LocalChain

sys.path.insert(0, str(Path(__file__).parent))

_seq = itertools.count()


def stack_names(tag: str = "e2e") -> StackNames:
    n = next(_seq)
    return StackNames(
        raw_bucket=f"{tag}-raw-{n}",
        processed_bucket=f"{tag}-processed-{n}",
        transform_queue=f"{tag}-raw-manifests-{n}",
        load_queue=f"{tag}-processed-manifests-{n}",
        failure_queue=f"{tag}-failures-{n}",
        idempotency_table=f"{tag}-idempotency-{n}",
        source_secret=f"{tag}-source-db-{n}",
        warehouse_secret=f"{tag}-warehouse-db-{n}",
    )


@pytest.fixture(scope="session")
def new_stack_names():
    """A factory of unique stack names, so stacks in one emulator never share a resource."""
    return stack_names


@pytest.fixture
def make_chain(aws, fresh_db):
    """A factory: a prepared LocalChain (resources created, warehouse migrated) over the given
    source and a new warehouse unless one is given. No safety lag: tests write, then run."""

    def make(source, warehouse=None, **kwargs) -> LocalChain:
        kwargs.setdefault("lag_seconds", 0)
        chain = LocalChain(aws, stack_names(), source, warehouse or fresh_db("wh"), **kwargs)
        chain.prepare()
        return chain

    return make
