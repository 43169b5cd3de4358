"""The end-to-end fixtures: a local chain over fresh databases and a fresh stack per test.

The helper module beside this file (``e2e_reference``) is imported as a top-level module:
pytest's default ``prepend`` import mode puts the directory of this conftest (a folder
without ``__init__.py``) on ``sys.path``. Unique stack names come from the root conftest.
"""

from __future__ import annotations

import io
import logging

import pytest

from totes.observability import logger
from totes_tools.local.chain import LocalChain


@pytest.fixture
def make_chain(aws, fresh_db, new_stack_names):
    """A factory: a prepared LocalChain (resources created, warehouse migrated) over the given
    source and a new warehouse unless one is given."""

    def make(source, warehouse=None, **kwargs) -> LocalChain:
        chain = LocalChain(
            aws, new_stack_names("e2e"), source, warehouse or fresh_db("wh"), **kwargs
        )
        chain.prepare()
        return chain

    return make


@pytest.fixture
def log_lines(monkeypatch) -> io.StringIO:
    """Everything the shared Powertools logger writes, at DEBUG (its handler keeps the stream
    it was born with, so redirecting stdout alone would miss it)."""
    buffer = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", buffer)
    level = logger.log_level
    logger.setLevel(logging.DEBUG)
    yield buffer
    logger.setLevel(level)
