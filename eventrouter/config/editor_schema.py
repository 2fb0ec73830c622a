"""The JSON Schemas of route files and route test files, for editors (``eventrouter schema``).

They are JSON files shipped in the package beside this module, written by hand with a
description and an example for every key, so that an editor can point at the file itself
(the shipped route files name it in a ``# yaml-language-server: $schema=`` line).
tests/test_schema.py keeps them in agreement with the loader: the same keys at the same
places, and the same verdict on every route file of the repository and on broken ones.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The schema file of each kind of file.
FILES = {"routes": "routes.schema.json", "tests": "tests.schema.json"}


def schema_text(kind: str) -> str:
    """Return the JSON Schema of ``kind`` (``routes`` or ``tests``) as JSON text."""
    return resources.files(__package__).joinpath(FILES[kind]).read_text(encoding="utf-8")


def schema_path(kind: str) -> Path:
    """Return where the schema file of ``kind`` is installed."""
    return Path(str(resources.files(__package__).joinpath(FILES[kind])))
