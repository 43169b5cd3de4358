"""Small Arrow arrays and scalars built from buffers, for stages that never use pandas.

``pa.array`` and ``pa.scalar`` of Python or NumPy values, and any compute call given a Python
value (``fill_null(False)``, ``subtract(x, 1)``), pass through Arrow's pandas shim, which
imports pandas on first use: about 0.13 s of CPU after pyarrow and NumPy on this machine, paid
by a cold transform's first batch (docs/transform.md "Cost per batch"). The load stage builds
its arrays the same way (``warehouse.backfill``, ``warehouse.references``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def ints(values: Sequence[int] | np.ndarray, type: pa.DataType | None = None) -> pa.Array:
    """Integers (no NULLs) as an array of ``type``: int32 (the default) or int64, or a type
    stored as one (date32, timestamp)."""
    type = pa.int32() if type is None else type
    data = np.asarray(values, dtype=np.int64 if type.bit_width == 64 else np.int32)
    return pa.Array.from_buffers(type, len(data), [None, pa.py_buffer(data)])


def bools(values: Sequence[bool] | np.ndarray) -> pa.Array:
    """Booleans (no NULLs)."""
    flags = np.asarray(values, dtype=bool)
    bits = np.packbits(flags, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(flags), [None, pa.py_buffer(bits)])


def strings(values: Sequence[str]) -> pa.Array:
    """Texts (no NULLs)."""
    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(e) for e in encoded], dtype=np.int64)
    data = pa.py_buffer(b"".join(encoded))
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets), data])


TRUE: pa.Scalar = bools([True])[0]
FALSE: pa.Scalar = bools([False])[0]
