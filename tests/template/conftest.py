"""Fixtures over the SAM template: as written, and expanded to CloudFormation."""

import pytest
from sam_template import expand, load_template


@pytest.fixture(scope="session")
def template() -> dict:
    return load_template()


@pytest.fixture(scope="session")
def expanded(template) -> dict:
    return expand(template)
