"""Arrays built from buffers equal what ``pa.array``/``pa.scalar`` build from Python values."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from totes.arrow_values import FALSE, TRUE, bools, ints, strings
from totes.star import dates


def test_buffer_built_arrays_equal_the_python_built_ones():
    assert ints([3, -1, 0]).equals(pa.array([3, -1, 0], pa.int32()))
    assert ints([], pa.int32()).equals(pa.array([], pa.int32()))
    assert ints([2**40], pa.int64()).equals(pa.array([2**40], pa.int64()))
    flags = [True, False, True] * 5
    assert bools(flags).equals(pa.array(flags))
    texts = ["GBP", "", "Zürich", "a" * 300]
    assert strings(texts).equals(pa.array(texts, pa.string()))
    assert TRUE.equals(pa.scalar(True))
    assert FALSE.equals(pa.scalar(False))


def test_the_calendar_constants_are_the_dates_they_name():
    assert dates._FIRST_DAY.equals(pa.scalar(datetime(1, 1, 1), pa.timestamp("s")))
    expected = pa.scalar(dates.DATE_SOURCE_VERSION, pa.timestamp("ms"))
    assert dates._DATE_SOURCE_VERSION.equals(expected)
    assert dates._DAY_NAMES.to_pylist()[1:] == list(dates.DAY_NAMES)
    assert dates._MONTH_NAMES.to_pylist()[1:] == list(dates.MONTH_NAMES)
