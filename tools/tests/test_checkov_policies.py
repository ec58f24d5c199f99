"""The project's checkov policies (tools/checkov) pass on the real templates (the lints run
that) and fail on templates that break each of them."""

import json
import subprocess


def failed_ids(run: subprocess.Popen) -> dict[str, set[str]]:
    """check id -> resources checkov failed it on (the runs: conftest.checkov_runs)."""
    stdout, _ = run.communicate(timeout=300)
    data = json.loads(stdout)
    reports = data if isinstance(data, list) else [data]
    out: dict[str, set[str]] = {}
    for report in reports:
        for check in report.get("results", {}).get("failed_checks", []):
            out.setdefault(check["check_id"], set()).add(check["resource"])
    return out


def test_azure_policies_fail_a_weakened_template(checkov_runs):
    failed = failed_ids(checkov_runs["azure"])
    assert set(failed) == {f"CKV2_BALENA_{n}" for n in range(1, 6)}, failed


def test_gcp_policies_fail_a_weakened_setup(checkov_runs):
    failed = failed_ids(checkov_runs["gcp"])
    assert {"CKV2_BALENA_20", "CKV2_BALENA_21", "CKV2_BALENA_22", "CKV2_BALENA_23"} <= set(failed), failed
    assert {"google_project_iam_member.wide", "google_secret_manager_secret_version.value"} <= failed["CKV2_BALENA_20"]
