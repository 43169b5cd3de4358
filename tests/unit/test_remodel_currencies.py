"""The frozen ISO 4217 names stay what the maintained source (pycountry) says."""

from __future__ import annotations

import json

import pytest

from totes.star import currencies


def test_iso4217_json_equals_what_pycountry_says():
    pytest.importorskip("pycountry")
    stored = json.loads(currencies.ISO4217_JSON.read_text(encoding="utf-8"))
    assert stored == currencies.iso4217_from_pycountry(), (
        "iso4217.json is stale: run totes.star.currencies.write_iso4217_json()"
    )


def test_the_names_the_warehouse_spec_quotes():
    names = currencies.currency_names()
    assert (names["GBP"], names["USD"], names["EUR"]) == ("Pound Sterling", "US Dollar", "Euro")
