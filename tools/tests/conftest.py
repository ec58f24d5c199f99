"""tools/tests: unit tests of the project's own checks (tools/provision_lint), its JSON Schemas
and its checkov policies. Run from the repository root with the lint venv's Python:

    PYTHONPATH=tools .venv/checkov/bin/python -m pytest tools/tests
"""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


def venv_bin(name: str) -> str:
    """A tool of the venv running the tests (check-jsonschema, checkov, hadolint)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable} (scripts/setup installs it)")
    return os.fspath(path)
