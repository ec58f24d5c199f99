"""infra/azure/main.bicep: parsed by two Bicep parsers, and its contract with the function.

tree-sitter-bicep (any error node fails) and pycep (the parser checkov uses) must both parse
it. The attribute rules of single resources (IoT Hub S1, Key Vault RBAC/soft delete/purge
protection, storage and function-app hardening) are checkov policies in tools/checkov/azure;
what checkov cannot say is checked here: that each of those resources exists exactly once (a
policy passes vacuously when its resource is gone), the `balena-provision` policy's rights, the
Key Vault secrets and the connection string built with listKeys, the @secure() parameter, the
app settings (plain values, and secrets only as Key Vault references), the Key Vault Secrets
User role assignment, the outputs.

    python -m provision_lint.azure_bicep infra/azure/main.bicep
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from .report import Report

KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
KV_PREFIX = "@Microsoft.KeyVault(SecretUri="
ONE_OF_EACH = (
    "Microsoft.Devices/IotHubs",
    "Microsoft.KeyVault/vaults",
    "Microsoft.Storage/storageAccounts",
    "Microsoft.Web/serverfarms",
    "Microsoft.Web/sites",
    "Microsoft.Authorization/roleAssignments",
)


def tree_sitter_errors(source: bytes) -> list[str]:
    import tree_sitter_bicep
    from tree_sitter import Language, Parser

    tree = Parser(Language(tree_sitter_bicep.language())).parse(source)
    errors: list[str] = []

    def walk(node: Any) -> None:
        if node.type == "ERROR" or node.is_missing:
            row, col = node.start_point
            errors.append(f"line {row + 1}, column {col + 1}: {'missing ' + node.type if node.is_missing else 'unexpected syntax'}")
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    return errors


def parse(path: Path) -> dict[str, Any]:
    from pycep import BicepParser

    return BicepParser().parse(file_path=path)


def _settings_in(value: Any, found: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        if set(value) == {"name", "value"} and isinstance(value["name"], str):
            found[value["name"]] = value["value"]
        for v in value.values():
            _settings_in(v, found)
    elif isinstance(value, list):
        for v in value:
            _settings_in(v, found)
    return found


def check_contract(report: Report, source: str, tree: dict[str, Any]) -> None:
    variables = {k: v.get("value") for k, v in (tree.get("variables") or {}).items()}
    resources = tree.get("resources") or {}
    params = tree.get("parameters") or {}
    declared = re.findall(r"^resource\s+(\w+)\s", source, flags=re.M)
    if sorted(declared) != sorted(resources):
        report.fail(f"parsed resources {sorted(resources)} differ from the declared ones {sorted(declared)}")
    else:
        report.ok(f"all {len(declared)} resource declarations parsed")

    def config(name: str) -> dict[str, Any]:
        cfg = resources[name]["config"]
        # a conditional resource (`= if (...) {`) nests its body one level down
        return cfg["config"] if "condition" in cfg and "config" in cfg else cfg

    def of_type(rtype: str) -> list[str]:
        return [n for n, r in resources.items() if r["type"] == rtype and not r.get("existing")]

    def resolve(value: Any) -> Any:
        # pycep gives a bare identifier as a string: resolve variables
        return variables.get(value, value) if isinstance(value, str) else value

    found: dict[str, str | None] = {}
    for rtype in ONE_OF_EACH:
        names = of_type(rtype)
        found[rtype] = names[0] if len(names) == 1 else None
        if len(names) != 1:
            report.fail(f"expected exactly one {rtype}, found {names}")
    if all(found.values()):
        report.ok(f"one of each of {', '.join(t.split('/')[-1] for t in ONE_OF_EACH)} (their attributes: checkov CKV2_BALENA_1-5)")

    hub = found["Microsoft.Devices/IotHubs"]
    if hub:
        cfg = config(hub)
        policies = {resolve(p.get("keyName")): p.get("rights") for p in (cfg.get("properties") or {}).get("authorizationPolicies") or []}
        if policies.get("balena-provision") == "RegistryRead, RegistryWrite":
            report.ok(f"{hub}: policy balena-provision has RegistryRead, RegistryWrite only")
        else:
            report.fail(f"{hub}: policy balena-provision must exist with rights 'RegistryRead, RegistryWrite', found {policies}")

    secret_names = {resolve(config(n).get("name")): n for n in of_type("Microsoft.KeyVault/vaults/secrets")}
    for wanted in ("iothub-connection-string", "balena-api-key"):
        if wanted not in secret_names:
            report.fail(f"no Key Vault secret named {wanted!r} (found {sorted(secret_names)})")
    cs_value = ""
    if "iothub-connection-string" in secret_names:
        cs_value = str((config(secret_names["iothub-connection-string"]).get("properties") or {}).get("value"))
    if "SharedAccessKeyName=" in cs_value and "IotHubKeys" in cs_value and "listKeys(" in cs_value:
        report.ok("secret iothub-connection-string: built with listKeys of the policy's IotHubKeys")
    else:
        report.fail(f"secret iothub-connection-string must be built from listKeys(...IotHubKeys...): {cs_value!r}")
    key_param = params.get("balenaApiKey") or {}
    if any(d.get("type") == "secure" for d in key_param.get("decorators", [])) and key_param.get("default") is None:
        report.ok("param balenaApiKey: @secure(), no default")
    else:
        report.fail("param balenaApiKey must be @secure() without a default")

    site = found["Microsoft.Web/sites"]
    if site:
        limit = ((config(site).get("properties") or {}).get("siteConfig") or {}).get("functionAppScaleLimit")
        scale = params.get("functionAppScaleLimit") or {}
        if limit == "functionAppScaleLimit" and scale.get("type") == "int" and isinstance(scale.get("default"), int) and scale["default"] >= 1:
            report.ok(f"siteConfig.functionAppScaleLimit = param functionAppScaleLimit (int, default {scale['default']})")
        else:
            report.fail("siteConfig.functionAppScaleLimit must be the param functionAppScaleLimit, an int with a default of at least 1")

    app_settings = _settings_in(list(variables.values()), {})
    if site:
        _settings_in(config(site), app_settings)
    plain = {"FUNCTIONS_WORKER_RUNTIME": "custom", "FUNCTIONS_EXTENSION_VERSION": "~4", "PROVISION_ALLOW_UNAUTHENTICATED": "false"}
    for name, wanted in plain.items():
        report.expect(f"app setting {name}", app_settings.get(name), wanted)
    if "BALENA_API_URL" in app_settings:
        report.ok("app setting BALENA_API_URL is set")
    else:
        report.fail("app setting BALENA_API_URL is missing")
    for name in ("CONNECTION_STRING", "BALENA_API_KEY", "PROVISION_OPERATOR_TOKEN"):
        value = app_settings.get(name)
        if value is None and name == "PROVISION_OPERATOR_TOKEN":
            continue
        expanded = re.sub(r"\$\{(\w+)\}", lambda m: str(variables.get(m.group(1), m.group(0))), str(value))
        if expanded.startswith(KV_PREFIX) and expanded.endswith(")"):
            report.ok(f"app setting {name} is a Key Vault reference")
        else:
            report.fail(f"app setting {name} must be a Key Vault reference ({KV_PREFIX}...)), found {value!r}")
    for name, value in app_settings.items():
        if resolve(value) in ("balenaApiKey", "operatorToken"):
            report.fail(f"app setting {name} carries a secret parameter in clear; use a Key Vault reference")

    role, vault = found["Microsoft.Authorization/roleAssignments"], found["Microsoft.KeyVault/vaults"]
    if role:
        cfg = config(role)
        if variables.get("keyVaultSecretsUserRoleId") == KEY_VAULT_SECRETS_USER and "keyVaultSecretsUserRoleId" in str(cfg) and cfg.get("scope") == vault:
            report.ok(f"{role}: Key Vault Secrets User on {vault}, for the function app's identity")
        else:
            report.fail(f"{role}: must grant Key Vault Secrets User ({KEY_VAULT_SECRETS_USER[:8]}-...) scoped to the vault")

    outputs = tree.get("outputs") or {}
    for wanted in ("functionAppName", "functionAppHostName"):
        if wanted in outputs:
            report.ok(f"output {wanted}")
        else:
            report.fail(f"output {wanted} is missing")


def lint(path: Path, report: Report) -> None:
    source = path.read_bytes()
    errors = tree_sitter_errors(source)
    for error in errors:
        report.fail(f"{path}: tree-sitter-bicep: {error}")
    if not errors:
        report.ok(f"{path}: tree-sitter-bicep parses it without an error node")
    try:
        tree = parse(path)
    except Exception as exc:  # pycep raises lark errors with line and column
        report.fail(f"{path}: pycep does not parse it: {exc}")
        return
    report.ok(f"{path}: pycep parses it")
    check_contract(report, source.decode("utf-8"), tree)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    report = Report("lint-azure")
    lint(Path(argv[0]), report)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
