from pathlib import Path

import pytest

from provision_lint.azure_bicep import check_contract, lint, parse, tree_sitter_errors
from provision_lint.report import Report

TEMPLATE = Path("infra/azure/main.bicep")


def problems_of(source: str, tmp_path) -> list[str]:
    path = tmp_path / "main.bicep"
    path.write_text(source, encoding="utf-8")
    report = Report("t")
    lint(path, report)
    return report.problems


def test_the_template_keeps_its_contract(tmp_path):
    assert problems_of(TEMPLATE.read_text(encoding="utf-8"), tmp_path) == []


def test_a_syntax_error_is_found_by_tree_sitter():
    assert tree_sitter_errors(b"resource x 'Microsoft.Web/sites@2023-12-01' = {\n  name: \n")


@pytest.mark.parametrize(
    "old,new",
    [
        ("rights: 'RegistryRead, RegistryWrite'", "rights: 'RegistryRead, RegistryWrite, ServiceConnect'"),
        ("@secure()\n@minLength(1)\nparam balenaApiKey", "@minLength(1)\nparam balenaApiKey"),
        ("output functionAppHostName", "output hostName"),
        ("name: 'balena-api-key'", "name: 'balena-key'"),
        ("'4633458b-17de-408a-b874-0445c86b69e6'", "'b24988ac-6180-42a0-ab88-20f7382dd24c'"),
        ("functionAppScaleLimit: functionAppScaleLimit", "functionAppScaleLimit: 200"),
    ],
)
def test_a_broken_contract_is_refused(old, new, tmp_path):
    source = TEMPLATE.read_text(encoding="utf-8")
    assert old in source, old
    assert problems_of(source.replace(old, new), tmp_path)


def test_a_secret_in_clear_among_the_app_settings_is_refused():
    tree = parse(TEMPLATE)
    source = TEMPLATE.read_text(encoding="utf-8")
    site = next(n for n, r in tree["resources"].items() if r["type"] == "Microsoft.Web/sites")
    tree["resources"][site]["config"].setdefault("properties", {})["extra"] = [{"name": "BALENA_API_KEY_COPY", "value": "balenaApiKey"}]
    report = Report("t")
    check_contract(report, source, tree)
    assert any("in clear" in p for p in report.problems)


def test_a_missing_resource_is_refused(tmp_path):
    source = TEMPLATE.read_text(encoding="utf-8")
    start = source.index("resource plan ")
    end = source.index("\n}\n", start) + 3
    assert problems_of(source[:start] + source[end:], tmp_path)
