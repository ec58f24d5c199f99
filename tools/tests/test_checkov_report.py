from provision_lint.checkov_report import judge
from provision_lint.report import Report

REASON = "a reason long enough to be a written reason"


def run(reports, **kw):
    report = Report("t")
    judge(report, reports, **kw)
    return report.problems


def rep(kind="terraform", passed=1, failed=(), skipped=(), parsing_errors=0):
    return {
        "check_type": kind,
        "results": {
            "passed_checks": [{"check_id": "CKV_X_1", "file_path": "/a.tf"}] * passed,
            "failed_checks": [{"check_id": c, "check_name": "n", "resource": "r", "file_path": "/a.tf", "file_line_range": [1, 2]} for c in failed],
            "skipped_checks": [{"check_id": c, "resource": "r", "file_path": "/a.tf", "check_result": {"suppress_comment": why}} for c, why in skipped],
        },
        "summary": {"passed": passed, "failed": len(failed), "skipped": len(skipped), "parsing_errors": parsing_errors},
    }


def test_a_clean_report_passes():
    assert run([rep(skipped=[("CKV_X_2", REASON)])], require=("terraform",), require_passed=("terraform",), min_files=1) == []


def test_a_failed_check_fails():
    assert run([rep(failed=["CKV_X_3"])], status=1)


def test_a_secrets_finding_fails():
    assert run([rep(), rep("secrets", passed=0, failed=["CKV_SECRET_6"])], status=1)


def test_a_parsing_error_fails():
    assert run([rep(parsing_errors=1)])


def test_a_skip_without_a_reason_fails():
    assert run([rep(skipped=[("CKV_X_2", "because")])])


def test_a_framework_that_did_not_run_or_passed_nothing_fails():
    assert run([rep()], require=("dockerfile",))
    assert run([rep(passed=0)], require_passed=("terraform",))


def test_fewer_files_than_given_fails():
    assert run([rep()], min_files=2)


def test_a_stale_skip_comment_fails(tmp_path):
    tf = tmp_path / "main.tf"
    tf.write_text("#checkov:skip=CKV_GCP_84:a reason\n#checkov:skip=CKV_GCP_99:gone\n")
    problems = run([rep(skipped=[("CKV_GCP_84", REASON)])], skip_sources=(str(tf),))
    assert len(problems) == 1 and "CKV_GCP_99" in problems[0]


def test_a_resource_checkov_did_not_build_fails():
    bom = {"components": [{"name": "google_service_account.run"}, {"name": "google_secret_manager_secret.secrets[\"a\"]"}]}
    assert run([rep()], bom=bom, declared_resources={"google_service_account.run", "google_secret_manager_secret.secrets"}) == []
    assert run([rep()], bom=bom, declared_resources={"google_service_account.run", "google_project_service.apis"})


def test_exit_status_1_without_a_failed_check_fails():
    assert run([rep()], status=1)
    assert run([rep()], status=2)
