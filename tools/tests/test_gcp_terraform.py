import shutil
from pathlib import Path

import pytest

from provision_lint.gcp_terraform import check, load
from provision_lint.report import Report


def problems_of(directory) -> list[str]:
    docs, errors = load(str(directory))
    report = Report("t")
    if not errors:
        check(report, docs)
    return errors + report.problems


@pytest.fixture
def infra(tmp_path):
    target = tmp_path / "gcp"
    shutil.copytree("infra/gcp", target)
    return target


def test_infra_gcp_keeps_its_contract():
    assert problems_of("infra/gcp") == []


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new), encoding="utf-8")


@pytest.mark.parametrize(
    "file,old,new",
    [
        ("versions.tf", 'version = "6.50.0"', 'version = "~> 6.50"'),
        ("main.tf", '"run.googleapis.com",', ""),
        ("main.tf", 'account_id   = var.service_account_id', 'account_id   = "fixed"'),
        ("main.tf", "secret_id = each.value", 'secret_id = "one"'),
        ("main.tf", 'member    = "serviceAccount:${google_service_account.run.email}"', 'member    = "allUsers"'),
        ("main.tf", 'file("${path.module}/../../deploy/gcp/service.yaml")', 'file("${path.module}/other.yaml")'),
        ("outputs.tf", 'output "secret_ids"', 'output "ids"'),
        ("main.tf", "repository_id = var.artifact_repository_id", 'repository_id = "x"'),
    ],
)
def test_a_broken_contract_is_refused(infra, file, old, new):
    edit(infra / file, old, new)
    assert problems_of(infra)


def test_a_secret_variable_or_key_like_default_is_refused(infra):
    with open(infra / "variables.tf", "a", encoding="utf-8") as f:
        f.write('\nvariable "balena_api_token" {\n  type = string\n}\n')
    assert problems_of(infra)
    edit(infra / "variables.tf", 'variable "balena_api_token" {\n  type = string\n}', 'variable "x" {\n  default = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqaw=="\n}')
    assert problems_of(infra)


def test_a_file_that_does_not_parse_is_refused(infra):
    (infra / "broken.tf").write_text('resource "x" "y" {\n', encoding="utf-8")
    assert problems_of(infra)
