"""tools/tests: unit tests of the project's own checks (tools/provision_lint), its JSON Schemas
and its checkov policies. Run from the repository root with the lint venv's Python:

    PYTHONPATH=tools .venv/checkov/bin/python -m pytest tools/tests
"""

import os
import shutil
import subprocess
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


def pytest_collection_modifyitems(items):
    """test_checkov_policies last: its checkov runs start with the session and go on meanwhile."""
    items.sort(key=lambda item: item.module.__name__ == "test_checkov_policies")


def replace_all(path: Path, pairs) -> None:
    text = path.read_text(encoding="utf-8")
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")


def start_checkov(directory: Path, framework: str, policies: str) -> subprocess.Popen:
    """checkov on DIRECTORY with only the project's own policies, started (the two tests' runs
    go side by side: checkov takes seconds to start)."""
    checkov = Path(sys.executable).parent / "checkov"
    if not checkov.exists():
        pytest.exit(f"checkov is not installed next to {sys.executable}: run scripts/setup", returncode=2)
    return subprocess.Popen(
        [os.fspath(checkov), "--directory", str(directory), "--framework", framework, "--skip-download",
         "--external-checks-dir", f"tools/checkov/{policies}", "--check", "CKV2_BALENA_*", "--output", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},
    )


@pytest.fixture(scope="session", autouse=True)
def checkov_runs(tmp_path_factory):
    """checkov with only the project's own policies (tools/checkov) on templates that break each
    of them, for test_checkov_policies: started before the first test of the session, so that it
    runs while the other tests do (pytest_collection_modifyitems puts its tests last)."""
    azure = tmp_path_factory.mktemp("azure")
    template = azure / "main.bicep"
    shutil.copy(REPO / "infra/azure/main.bicep", template)
    replace_all(template, [
        ("name: 'S1'", "name: 'S2'"),
        ("enablePurgeProtection: true", "enablePurgeProtection: false"),
        ("minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'"),
        ("reserved: true", "reserved: false"),
        ("ftpsState: 'Disabled'", "ftpsState: 'AllAllowed'"),
    ])
    root = tmp_path_factory.mktemp("gcp")
    infra = root / "infra" / "gcp"
    shutil.copytree(REPO / "infra/gcp", infra)
    (root / "deploy" / "gcp").mkdir(parents=True)
    shutil.copy(REPO / "deploy/gcp/service.yaml", root / "deploy" / "gcp")
    replace_all(infra / "main.tf", [
        ('role      = "roles/secretmanager.secretAccessor"', 'role      = "roles/secretmanager.admin"'),
        ('role               = "roles/iam.serviceAccountUser"', 'role               = "roles/iam.serviceAccountTokenCreator"'),
        ('format        = "DOCKER"', 'format        = "MAVEN"'),
    ])
    with open(infra / "main.tf", "a", encoding="utf-8") as f:
        f.write('\nresource "google_project_iam_member" "wide" {\n  project = var.project_id\n  role    = "roles/editor"\n'
                '  member  = "serviceAccount:${google_service_account.run.email}"\n}\n'
                '\nresource "google_secret_manager_secret_version" "value" {\n  secret      = google_secret_manager_secret.secrets["BALENA_API_KEY"].id\n'
                '  secret_data = "in-the-state"\n}\n')
    runs = {"azure": start_checkov(azure, "bicep", "azure"), "gcp": start_checkov(infra, "terraform", "gcp")}
    yield runs
    for run in runs.values():
        if run.poll() is None:
            run.kill()
            run.wait()
