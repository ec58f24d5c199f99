"""The JSON Schemas lint-azure and lint-gcp validate with (check-jsonschema, as the lints run it):
the project's files pass, a file that breaks a rule is refused."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import venv_bin

SCHEMAS = "tools/schemas"


def valid(schema: str, data, tmp_path, name="instance.json") -> bool:
    """What check-jsonschema answers for DATA against SCHEMA (same library, same schemas, in
    process: the mutations below would take a second each through the CLI, which
    test_the_project_files_are_valid runs)."""
    return not any(_validator(schema).iter_errors(data))


def _validator(schema: str):
    from jsonschema.validators import validator_for
    from referencing import Registry, Resource

    files = sorted(Path(SCHEMAS).resolve().rglob("*.json"))
    registry = Registry().with_resources((p.as_uri(), Resource.from_contents(json.loads(p.read_text()))) for p in files)
    wrapper = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": Path(SCHEMAS, schema).resolve().as_uri()}
    return validator_for(wrapper)(wrapper, registry=registry)


def cli_valid(schema: str, path: str) -> bool:
    run = subprocess.run([venv_bin("check-jsonschema"), "--default-filetype", "json", "--schemafile", f"{SCHEMAS}/{schema}", path], capture_output=True, text=True)
    return run.returncode == 0


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def rendered_service(*args) -> dict:
    out = subprocess.run(
        ["bash", "deploy/gcp/deploy.sh", "--project", "test-project-1", "--registry-id", "reg", "--tag", "t", "--print-service-yaml", *args],
        capture_output=True, text=True, check=True,
    ).stdout
    return yaml.safe_load(out)


def test_the_project_files_are_valid(tmp_path):
    cases = [
        ("schemastore/host.json", "deploy/azure/host.json"),
        ("contract/azure-host.json", "deploy/azure/host.json"),
        ("schemastore/function.json", "deploy/azure/provision/function.json"),
        ("contract/azure-function-provision.json", "deploy/azure/provision/function.json"),
        ("contract/azure-function-healthz.json", "deploy/azure/healthz/function.json"),
        ("contract/azure-local-settings.json", "deploy/azure/local.settings.json.example"),
        ("contract/gcp-cloudbuild.json", "deploy/gcp/cloudbuild.yaml"),
        ("contract/cloudrun-service-template.json", "deploy/gcp/service.yaml"),
    ]
    for schema, path in cases:
        assert valid(schema, load(path), tmp_path), (schema, path)
    assert valid("contract/cloudrun-service.json", rendered_service(), tmp_path)
    assert valid("contract/cloudrun-service.json", rendered_service("--no-operator-token"), tmp_path)
    # The lints validate these same files with the check-jsonschema CLI; here it runs once on
    # them too, so that a schema the CLI reads differently cannot hide behind the in-process run.
    assert cli_valid("contract/azure-function-provision.json", "deploy/azure/provision/function.json")


def test_a_broken_file_is_refused_by_the_cli(tmp_path):
    function = load("deploy/azure/provision/function.json")
    function["bindings"][0]["authLevel"] = "nobody"
    path = tmp_path / "function.json"
    path.write_text(json.dumps(function), encoding="utf-8")
    assert not cli_valid("contract/azure-function-provision.json", str(path))
    assert not cli_valid("schemastore/function.json", str(path))


def test_the_published_schemas_refuse_a_wrong_type(tmp_path):
    host = load("deploy/azure/host.json")
    host["extensionBundle"]["id"] = 3
    assert not valid("schemastore/host.json", host, tmp_path)
    function = load("deploy/azure/healthz/function.json")
    function["bindings"][0]["direction"] = "sideways"
    assert not valid("schemastore/function.json", function, tmp_path)


@pytest.mark.parametrize(
    "dotted,value",
    [
        ("customHandler.enableForwardingHttpRequest", False),
        ("customHandler.description.defaultExecutablePath", "handler"),
        ("extensions.http.routePrefix", ""),
        ("logging.logLevel.Host.Function.Console", "Warning"),
    ],
)
def test_the_host_contract_refuses(dotted, value, tmp_path):
    host = load("deploy/azure/host.json")
    node = host
    parts = dotted.split(".")
    if parts[:3] == ["logging", "logLevel", "Host"]:
        host["logging"]["logLevel"]["Host.Function.Console"] = value
    else:
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    assert not valid("contract/azure-host.json", host, tmp_path)


@pytest.mark.parametrize(
    "change",
    [
        lambda f: f["bindings"][0].update(authLevel="function"),
        lambda f: f["bindings"][0].update(methods=["get", "post"]),
        lambda f: f["bindings"][0].update(route="provisioning"),
        lambda f: f["bindings"][1].update(name="res"),
        lambda f: f["bindings"].append({"type": "queue", "direction": "out", "name": "q"}),
    ],
)
def test_the_function_contract_refuses(change, tmp_path):
    function = load("deploy/azure/provision/function.json")
    change(function)
    assert not valid("contract/azure-function-provision.json", function, tmp_path)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["Values"].pop("BALENA_API_URL"),
        lambda s: s["Values"].update(BALENA_API_KEY="a-real-looking-key-0123456789"),
        lambda s: s["Values"].update(CONNECTION_STRING="HostName=FAKE.azure-devices.net;DeviceId=d;SharedAccessKey=x"),
        lambda s: s.update(IsEncrypted=True),
    ],
)
def test_the_local_settings_contract_refuses(change, tmp_path):
    settings = load("deploy/azure/local.settings.json.example")
    change(settings)
    assert not valid("contract/azure-local-settings.json", settings, tmp_path)


def test_the_cloudbuild_contract_refuses_a_build_without_buildkit(tmp_path):
    build = load("deploy/gcp/cloudbuild.yaml")
    build["steps"][0]["env"] = []
    assert not valid("contract/gcp-cloudbuild.json", build, tmp_path, "c.yaml")


def _env(service):
    return service["spec"]["template"]["spec"]["containers"][0]["env"]


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["httpGet"].update(path="/"),
        lambda s: s["spec"]["template"]["metadata"]["annotations"].pop("autoscaling.knative.dev/maxScale"),
        lambda s: s["metadata"]["annotations"].update({"run.googleapis.com/ingress": "internal"}),
        lambda s: _env(s).append({"name": "PROVISION_OPERATOR_TOKEN", "value": "in-clear"}),
        lambda s: _env(s).__setitem__(slice(None), [e for e in _env(s) if e["name"] != "CB_REGISTRY_ID"]),
        lambda s: s["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort=80),
    ],
)
def test_the_cloud_run_contract_refuses(change, tmp_path):
    service = rendered_service()
    change(service)
    assert not valid("contract/cloudrun-service.json", service, tmp_path, "s.yaml")


def test_anonymous_callers_are_not_the_default(tmp_path):
    assert not valid("contract/cloudrun-service.json", rendered_service("--accept-anonymous-callers"), tmp_path, "s.yaml")
