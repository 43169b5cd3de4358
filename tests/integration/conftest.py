"""Integration fixtures: a source holding the real snapshot, and the stack's raw lake."""

from __future__ import annotations

import io

import boto3
import pytest

from totes.db import DbCredentials
from totes.lake import Lake
from totes_tools.source.snapshot import load_snapshot


@pytest.fixture
def source(source_db, pg_connect, snapshot_dir) -> DbCredentials:
    load_snapshot(pg_connect(source_db), snapshot_dir)
    return source_db


@pytest.fixture
def lake(stack) -> Lake:
    return Lake(boto3.client("s3"), stack.raw_bucket)


@pytest.fixture
def log_lines(monkeypatch) -> io.StringIO:
    """What the shared Powertools logger writes (its handler keeps the stream it was born with)."""
    from totes.observability import logger

    buffer = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", buffer)
    return buffer


@pytest.fixture(params=[False, True], ids=["sorted", "piece_by_piece"])
def read_alone(request, monkeypatch) -> bool:
    """Runs the test once per way a reader reads its table (``extract.readers.read_plan``):
    once for the whole run sorted by piece, as a run of many pieces does, and piece by piece,
    as a run of a few does, whatever the test's number of pieces."""
    from totes.extract import readers

    monkeypatch.setattr(readers, "PIECES_READ_ALONE", 10**6 if request.param else 0)
    return bool(request.param)


@pytest.fixture(params=["pg8000", "adbc"])
def reader_driver(request, monkeypatch) -> str:
    """Runs the test once per driver of the large-table readers (``extract.adbc.choose``):
    ``pg8000`` as a deployment without the ADBC layer gets it (the driver cannot be
    imported), ``adbc`` as one with it (the default where it can)."""
    from totes.extract import adbc

    if request.param == "pg8000":
        monkeypatch.setattr(adbc, "available", lambda: False)
    assert adbc.choose(None) == request.param
    return request.param
