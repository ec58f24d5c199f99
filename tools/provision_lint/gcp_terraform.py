"""infra/gcp: parsed with python-hcl2 (checkov's Terraform parser), and what checkov cannot say.

The per-resource rules (no project-wide IAM, no secret value or key in Terraform, secretAccessor
and serviceAccountUser bindings on the runtime service account, a Docker repository) are checkov
policies in tools/checkov/gcp. Checked here: every file parses; the google provider is pinned to
an exact version; the run, secretmanager and artifactregistry APIs are enabled; exactly one
runtime service account; the secrets are the ones deploy/gcp/service.yaml reads (derived from
it, one google_secret_manager_secret and one secretAccessor binding each); no variable looks
like a secret or has a key-looking default; one Artifact Registry repository; the outputs
deploy/gcp/README.md uses.

    python -m provision_lint.gcp_terraform infra/gcp
"""

from __future__ import annotations

import glob
import os
import re
import sys
from typing import Any

from .report import Report

APIS = ("run.googleapis.com", "secretmanager.googleapis.com", "artifactregistry.googleapis.com")
OUTPUTS = ("service_account_email", "image_repository", "secret_ids")
SECRETISH = re.compile(r"(api_key|token|secret|password|credential|service_account_json)", re.I)
KEYLIKE = re.compile(r"[A-Za-z0-9+/=_-]{32,}")


def load(directory: str) -> tuple[dict[str, Any], list[str]]:
    import hcl2

    docs, errors = {}, []
    for path in sorted(glob.glob(os.path.join(directory, "*.tf"))):
        try:
            with open(path, encoding="utf-8") as f:
                docs[path] = hcl2.load(f)
        except Exception as exc:  # lark errors carry line and column
            errors.append(f"{path} does not parse: {exc}")
    return docs, errors


def _one(v: Any) -> Any:
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def get(body: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        body = _one(body)
        if not isinstance(body, dict) or part not in body:
            return None
        body = body[part]
    return _one(body)


def check(report: Report, docs: dict[str, Any]) -> None:
    resources: dict[tuple[str, str], Any] = {}
    variables: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    locals_: dict[str, Any] = {}
    providers: dict[str, Any] = {}
    for doc in docs.values():
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    resources[(rtype, name)] = body
        for block in doc.get("variable", []):
            variables.update(block)
        for block in doc.get("output", []):
            outputs.update(block)
        for block in doc.get("locals", []):
            locals_.update({k: v for k, v in block.items() if not k.startswith("__")})
        for tf in doc.get("terraform", []):
            for req in tf.get("required_providers", []):
                providers.update(req)

    def of_type(rtype: str) -> dict[str, Any]:
        return {name: body for (t, name), body in resources.items() if t == rtype}

    google = _one(providers.get("google"))
    if isinstance(google, dict) and google.get("source") == "hashicorp/google" and re.fullmatch(r"\d+\.\d+\.\d+", str(google.get("version", ""))):
        report.ok(f"provider hashicorp/google pinned to {google['version']}")
    else:
        report.fail(f"required_providers.google must be hashicorp/google with an exact version (x.y.z), found {google!r}")

    services = str(locals_.get("services"))
    missing = [api for api in APIS if api not in services]
    apis = of_type("google_project_service")
    if missing:
        report.fail(f"APIs not enabled (local.services): {', '.join(missing)}")
    elif len(apis) == 1 and "local.services" in str(get(next(iter(apis.values())), "for_each")):
        report.ok("APIs run, secretmanager, artifactregistry enabled (google_project_service for_each local.services)")
    else:
        report.fail("expected one google_project_service with for_each = local.services")

    accounts = of_type("google_service_account")
    if list(accounts) == ["run"] and str(get(accounts["run"], "account_id")) == "${var.service_account_id}":
        report.ok("one runtime service account (account_id = var.service_account_id)")
    else:
        report.fail(f"expected exactly google_service_account.run with account_id = var.service_account_id, found {list(accounts)}")

    all_secrets = str(locals_.get("all_secrets"))
    if "secretKeyRef" in all_secrets and "local.service" in all_secrets and "deploy/gcp/service.yaml" in str(locals_.get("service")):
        report.ok("local.all_secrets: the secretKeyRef names deploy/gcp/service.yaml reads (yamldecode of the file)")
    else:
        report.fail("local.all_secrets must be derived from deploy/gcp/service.yaml (local.service = yamldecode(file(...service.yaml)), its secretKeyRef names)")
    secrets = of_type("google_secret_manager_secret")
    if list(secrets) == ["secrets"] and get(secrets["secrets"], "for_each") == "${local.secrets}" and get(secrets["secrets"], "secret_id") == "${each.value}":
        report.ok("google_secret_manager_secret.secrets: one per local.secrets, no value")
    else:
        report.fail("expected google_secret_manager_secret.secrets with for_each = local.secrets, secret_id = each.value")
    readers = of_type("google_secret_manager_secret_iam_member")
    reader = readers.get("run_reads")
    if (len(readers) == 1 and reader and get(reader, "for_each") == "${local.secrets}"
            and get(reader, "member") == "serviceAccount:${google_service_account.run.email}"
            and get(reader, "secret_id") == "${google_secret_manager_secret.secrets[each.key].id}"):
        report.ok("one secretAccessor binding per secret, for the runtime service account (role: checkov CKV2_BALENA_21)")
    else:
        report.fail("expected google_secret_manager_secret_iam_member.run_reads: for_each local.secrets, member the runtime service account, on google_secret_manager_secret.secrets[each.key]")

    bad = False
    for name, body in variables.items():
        default = get(body, "default")
        if SECRETISH.search(name) and get(body, "type") != "${bool}":
            report.fail(f"variable {name} looks like a secret: secrets go to Secret Manager out of band, not through Terraform")
            bad = True
        if isinstance(default, str) and KEYLIKE.search(default):
            report.fail(f"variable {name} has a default that looks like a key: {default[:8]}...")
            bad = True
    if not bad:
        report.ok(f"{len(variables)} variables: none carries a secret or a secret-looking default")

    repos = of_type("google_artifact_registry_repository")
    if len(repos) == 1 and get(next(iter(repos.values())), "repository_id") == "${var.artifact_repository_id}":
        report.ok("one Artifact Registry repository (repository_id = var.artifact_repository_id; format: checkov CKV2_BALENA_23)")
    else:
        report.fail(f"expected one google_artifact_registry_repository with repository_id = var.artifact_repository_id, found {list(repos)}")

    for wanted in OUTPUTS:
        if wanted in outputs:
            report.ok(f"output {wanted}")
        else:
            report.fail(f"output {wanted} is missing")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    report = Report("lint-gcp")
    docs, errors = load(argv[0])
    for error in errors:
        report.fail(error)
    if not docs:
        report.fail(f"no .tf file in {argv[0]}")
    if not report.problems:
        report.ok(f"{len(docs)} files parse: {', '.join(sorted(docs))}")
        check(report, docs)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
