import tomllib

import pytest

from provision_lint.dockerfile import SpecError, check, dockerignore_excluder, spec, workspace_sources
from provision_lint.report import Report



def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def contract(dockerfile=None, script=None, dockerignore=None):
    with open("Cargo.toml", "rb") as f:
        cargo = tomllib.load(f)
    report = Report("t")
    check(
        report,
        dockerfile if dockerfile is not None else read("deploy/gcp/Dockerfile"),
        script if script is not None else read("deploy/gcp/build-static.sh"),
        cargo,
        dockerignore if dockerignore is not None else read(".dockerignore"),
        ["provision-core/Cargo.toml", "provision-core/src/lib.rs", "crates/provision-cloudrun/src/main.rs"],
    )
    return report.problems


def test_the_dockerfile_keeps_its_contract():
    assert contract() == []


def test_spec_reads_what_check_image_runs():
    assert spec(read("deploy/gcp/Dockerfile")) == ("deploy/gcp/build-static.sh", "dist/gcp/provision-cloudrun", "/usr/local/bin/provision-cloudrun")


def test_spec_refuses_a_dockerfile_without_a_build_command():
    with pytest.raises(SpecError):
        spec("FROM rust AS build\nWORKDIR /src\nRUN cargo build\nFROM scratch\nCOPY --from=build /src/x /x\n")


@pytest.mark.parametrize(
    "old,new",
    [
        ("FROM gcr.io/distroless/static-debian12:nonroot", "FROM scratch"),
        ("USER nonroot", "USER root"),
        ("EXPOSE 8080", "EXPOSE 80"),
        ("/src/dist/gcp/provision-cloudrun /usr", "/src/target/provision-cloudrun /usr"),
        ('ENTRYPOINT ["/usr/local/bin/provision-cloudrun"]', "ENTRYPOINT /usr/local/bin/provision-cloudrun"),
        ("rust:1.95.0-slim-bookworm", "rust:1.70.0-slim-bookworm"),
        ("sharing=locked deploy/gcp/build-static.sh", "sharing=locked cargo build --release"),
        ("# build-command:", "# the build:"),
    ],
)
def test_a_broken_dockerfile_is_refused(old, new):
    text = read("deploy/gcp/Dockerfile")
    assert old in text
    assert contract(dockerfile=text.replace(old, new))


def test_a_changed_build_script_is_refused():
    script = read("deploy/gcp/build-static.sh")
    assert contract(script=script.replace("-p provision-cloudrun", "-p provision-azure"))
    assert contract(script=script.replace("out=", "output="))


def test_dockerignore_must_keep_sources_and_drop_build_output():
    ignore = read(".dockerignore")
    assert contract(dockerignore=ignore + "\n/crates\n")
    assert contract(dockerignore=ignore.replace("**/target", ""))


def test_dockerignore_semantics():
    excluded = dockerignore_excluder("**/target\n/deploy\n!/deploy/gcp/build-static.sh\n")
    assert excluded("target/x") and excluded("crates/a/target/b")
    assert excluded("deploy/aws/template.yaml")
    assert not excluded("deploy/gcp/build-static.sh")
    assert not excluded("crates/a/src/lib.rs")


def test_workspace_sources_lists_the_members():
    with open("Cargo.toml", "rb") as f:
        sources = workspace_sources(tomllib.load(f))
    assert "provision-core/Cargo.toml" in sources
    assert any(s.endswith(".rs") for s in sources)
