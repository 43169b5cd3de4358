"""ISO 4217 currency names for dim_currency, from a JSON file kept in the package.

The names come from pycountry (a maintained copy of the ISO 4217 list), but pycountry is not
available in the Lambda runtime, so the list is frozen into ``iso4217.json`` beside this module.
``iso4217_from_pycountry`` regenerates it and a unit test asserts the file still equals what
pycountry says, so upgrading pycountry and re-running the generator keeps the names current.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pyarrow as pa

from totes.arrow_values import strings

ISO4217_JSON = Path(__file__).with_name("iso4217.json")


@functools.cache
def currency_names() -> dict[str, str]:
    """Alphabetic code -> ISO 4217 English name (e.g. "GBP" -> "Pound Sterling")."""
    names: dict[str, str] = json.loads(ISO4217_JSON.read_text(encoding="utf-8"))
    return names


def currency_name_table() -> pa.Table:
    """The names as an Arrow table, ready to be joined on ``currency_code``."""
    names = currency_names()
    return pa.table(
        {
            "currency_code": strings(list(names)),
            "currency_name": strings(list(names.values())),
        }
    )


def iso4217_from_pycountry() -> dict[str, str]:
    """What ``iso4217.json`` must hold, according to the installed pycountry (dev only)."""
    import pycountry  # dev-only: absent in the Lambda runtime

    return {c.alpha_3: c.name for c in sorted(pycountry.currencies, key=lambda c: c.alpha_3)}


def write_iso4217_json(path: Path = ISO4217_JSON) -> None:
    """Regenerate the data file: ``python -c "from totes.star.currencies import *;
    write_iso4217_json()"``."""
    text = json.dumps(iso4217_from_pycountry(), indent=1, ensure_ascii=False, sort_keys=True)
    path.write_text(text + "\n", encoding="utf-8")
