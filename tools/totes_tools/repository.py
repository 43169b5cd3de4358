"""Where the project checkout is: the local chain imports the handlers from ``functions/`` and
reads the scheduler event from ``sam/``, which are not Python packages and ship with neither
package.

One rule, stated once: ``$TOTES_REPO_ROOT`` if set, else the nearest directory above this
package that holds ``template.yaml`` (a checkout, or an editable install of one). Anything
else (a plain wheel install outside a checkout) fails with a message saying what to set,
instead of importing handlers from a guessed path.
"""

from __future__ import annotations

import os
from pathlib import Path

from totes.errors import ConfigurationError

ROOT_ENV = "TOTES_REPO_ROOT"
MARKER = "template.yaml"


def repository_root() -> Path:
    """The checkout's root directory (the one holding ``template.yaml``)."""
    explicit = os.environ.get(ROOT_ENV)
    if explicit:
        root = Path(explicit).expanduser().resolve()
        if not (root / MARKER).is_file():
            raise ConfigurationError(f"{ROOT_ENV}={explicit} holds no {MARKER}")
        return root
    here = Path(__file__).resolve().parent
    for candidate in (here, *here.parents):
        if (candidate / MARKER).is_file():
            return candidate
    raise ConfigurationError(
        f"cannot find the project checkout (no {MARKER} above {here}); set {ROOT_ENV} to the"
        " directory that holds template.yaml, functions/ and sam/"
    )


def functions_dir() -> Path:
    return repository_root() / "functions"


def sam_dir() -> Path:
    return repository_root() / "sam"
