"""The tooling finds the checkout (functions/, sam/) one way: ``$TOTES_REPO_ROOT``, else the
nearest ``template.yaml`` above the package, else a clear error saying what to set."""

from __future__ import annotations

from pathlib import Path

import pytest

from totes.errors import ConfigurationError
from totes_tools import repository

CHECKOUT = Path(__file__).resolve().parents[2]


def test_the_checkout_is_found_above_the_tooling_package(monkeypatch):
    monkeypatch.delenv(repository.ROOT_ENV, raising=False)

    assert repository.repository_root() == CHECKOUT
    assert repository.functions_dir() == CHECKOUT / "functions"
    assert repository.sam_dir() == CHECKOUT / "sam"


def test_the_environment_variable_overrides_the_search(monkeypatch, tmp_path):
    (tmp_path / "template.yaml").write_text("Resources: {}\n")
    monkeypatch.setenv(repository.ROOT_ENV, str(tmp_path))

    assert repository.functions_dir() == tmp_path / "functions"


def test_an_override_without_a_template_is_refused_naming_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(repository.ROOT_ENV, str(tmp_path))

    with pytest.raises(ConfigurationError, match=f"TOTES_REPO_ROOT={tmp_path} holds no"):
        repository.repository_root()


def test_outside_a_checkout_the_error_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.delenv(repository.ROOT_ENV, raising=False)
    installed = tmp_path / "site-packages" / "totes_tools" / "repository.py"
    monkeypatch.setattr(repository, "__file__", str(installed))

    with pytest.raises(
        ConfigurationError, match=r"cannot find the project checkout.*TOTES_REPO_ROOT"
    ):
        repository.repository_root()
