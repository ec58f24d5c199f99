"""The project's checkov policies (tools/checkov) pass on the real templates (the lints run
that) and fail on templates that break each of them."""

import json
import os
import shutil
import subprocess
from pathlib import Path

from conftest import venv_bin


def failed_ids(directory: Path, framework: str, policies: str) -> dict[str, set[str]]:
    """check id -> resources checkov failed it on, running only the project's own policies."""
    run = subprocess.run(
        [venv_bin("checkov"), "--directory", str(directory), "--framework", framework, "--skip-download",
         "--external-checks-dir", f"tools/checkov/{policies}", "--check", "CKV2_BALENA_*", "--output", "json"],
        capture_output=True, text=True, env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},
    )
    data = json.loads(run.stdout)
    reports = data if isinstance(data, list) else [data]
    out: dict[str, set[str]] = {}
    for report in reports:
        for check in report.get("results", {}).get("failed_checks", []):
            out.setdefault(check["check_id"], set()).add(check["resource"])
    return out


def replace_all(path: Path, pairs) -> None:
    text = path.read_text(encoding="utf-8")
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")


def test_azure_policies_fail_a_weakened_template(tmp_path):
    template = tmp_path / "main.bicep"
    shutil.copy("infra/azure/main.bicep", template)
    replace_all(template, [
        ("name: 'S1'", "name: 'S2'"),
        ("enablePurgeProtection: true", "enablePurgeProtection: false"),
        ("minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'"),
        ("reserved: true", "reserved: false"),
        ("ftpsState: 'Disabled'", "ftpsState: 'AllAllowed'"),
    ])
    failed = failed_ids(tmp_path, "bicep", "azure")
    assert set(failed) == {f"CKV2_BALENA_{n}" for n in range(1, 6)}, failed


def test_gcp_policies_fail_a_weakened_setup(tmp_path):
    infra = tmp_path / "infra" / "gcp"
    shutil.copytree("infra/gcp", infra)
    (tmp_path / "deploy" / "gcp").mkdir(parents=True)
    shutil.copy("deploy/gcp/service.yaml", tmp_path / "deploy" / "gcp")
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
    failed = failed_ids(infra, "terraform", "gcp")
    assert {"CKV2_BALENA_20", "CKV2_BALENA_21", "CKV2_BALENA_22", "CKV2_BALENA_23"} <= set(failed), failed
    assert {"google_project_iam_member.wide", "google_secret_manager_secret_version.value"} <= failed["CKV2_BALENA_20"]
