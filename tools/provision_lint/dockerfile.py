"""deploy/gcp/Dockerfile: what its stages say, and the project's contract with it.

General Dockerfile rules are hadolint's and checkov's (scripts/lint-gcp runs both). This module
reads what scripts/check-image needs to run the build stage outside a container, and checks
what only this project knows:

* the build stage is rust:<at least the workspace's rust-version>-[slim-]bookworm, installs
  musl-tools and the x86_64-unknown-linux-musl target, and has exactly one RUN right after a
  `# build-command` comment, which runs deploy/gcp/build-static.sh, whose own `# build-command`
  line is the cargo build of provision-cloudrun for musl;
* the final stage is gcr.io/distroless/static-debian12:nonroot (its CA certificates are the
  binary's TLS trust store), COPYs exactly the file build-static.sh writes (WORKDIR + out=),
  runs as USER nonroot, EXPOSEs 8080, and its ENTRYPOINT is that binary (exec form);
* /.dockerignore keeps the workspace's manifests and sources in the build context and build
  output, virtualenvs, node_modules and git history out.

    python -m provision_lint.dockerfile spec deploy/gcp/Dockerfile   # command, artifact, image path
    python -m provision_lint.dockerfile check deploy/gcp/Dockerfile  # the contract (from the repository root)
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field

from .report import Report

MUSL = "x86_64-unknown-linux-musl"
CARGO_BUILD = f"cargo build --release --locked --target {MUSL} -p provision-cloudrun"
MUST_DROP = (
    "target/release/x", "crates/x/target/y", ".venv/bin/python", ".git/HEAD",
    "tests/compat/node_modules/x/package.json", "dist/gcp/provision-cloudrun",
)


@dataclass
class Instruction:
    word: str
    rest: str
    comment: str  # the comment lines right above it, joined


@dataclass
class Stage:
    image: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, word: str) -> list[str]:
        return [i.rest for i in self.instructions if i.word == word]


def parse(text: str) -> list[Stage]:
    """Stages and their instructions, continuation lines joined, each with the comment above it."""
    instructions: list[Instruction] = []
    pending, comment = "", []
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            comment = comment + [stripped] if stripped else []
            continue
        pending += (" " if pending else "") + stripped.rstrip("\\").strip()
        if stripped.endswith("\\"):
            continue
        word, _, rest = pending.partition(" ")
        instructions.append(Instruction(word.upper(), rest.strip(), " ".join(comment)))
        pending, comment = "", []
    stages: list[Stage] = []
    for ins in instructions:
        if ins.word == "FROM":
            stages.append(Stage(ins.rest))
        elif stages:
            stages[-1].instructions.append(ins)
    return stages


class SpecError(ValueError):
    pass


def spec(text: str) -> tuple[str, str, str]:
    """(build command without --mount options, the copied file relative to WORKDIR, its path in the image)."""
    stages = parse(text)
    if len(stages) < 2:
        raise SpecError("expected a build stage and a final stage")
    build, final = stages[0], stages[-1]
    workdir = build.all("WORKDIR")
    runs = [i.rest for i in build.instructions if i.word == "RUN" and "# build-command" in i.comment]
    copies = [shlex.split(r) for r in final.all("COPY") if r.startswith("--from=")]
    if len(workdir) != 1 or len(runs) != 1 or len(copies) != 1:
        raise SpecError("expected one WORKDIR and one `# build-command` RUN in the build stage, one COPY --from in the final stage")
    command = " ".join(shlex.quote(w) for w in shlex.split(runs[0]) if not w.startswith("--mount="))
    src, dst = [w for w in copies[0] if not w.startswith("--")]
    root = workdir[0].rstrip("/") + "/"
    if not src.startswith(root):
        raise SpecError(f"the final stage copies {src}, outside the build stage's WORKDIR {workdir[0]}")
    return command, src[len(root):], dst


def dockerignore_excluder(text: str):
    """Docker's .dockerignore semantics: the last matching rule wins; a directory's exclusion covers its files."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_re((line[1:] if negate else line).strip("/"))))

    def excluded(rel: str) -> bool:
        result = False
        for negate, rx in rules:
            if rx.match(rel):
                result = not negate
        return result

    return excluded


def _pattern_re(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "(?:/.*)?$")


def check(report: Report, dockerfile: str, build_script: str, cargo_toml: dict, dockerignore: str, sources: list[str]) -> None:
    """The contract; `sources` are the workspace's files the build needs (manifests, .rs)."""
    stages = parse(dockerfile)
    if len(stages) != 2:
        report.fail(f"expected two stages (build, final), found {len(stages)}")
        return
    build, final = stages
    rust_version = cargo_toml["workspace"]["package"]["rust-version"]
    m = re.fullmatch(r"(?:docker\.io/library/)?rust:(\d+)\.(\d+)(?:\.\d+)?-(?:slim-)?bookworm\s+AS\s+(\w+)", build.image, re.I)
    stage_name = "build"
    if not m:
        report.fail(f"build stage must be FROM rust:<version>-[slim-]bookworm AS <name>, found {build.image!r}")
    else:
        stage_name = m.group(3)
        if (int(m.group(1)), int(m.group(2))) < tuple(int(x) for x in rust_version.split(".")[:2]):
            report.fail(f"rust {m.group(1)}.{m.group(2)} in the build stage is older than the workspace's rust-version {rust_version}")
        else:
            report.ok(f"build stage: rust {m.group(1)}.{m.group(2)} on bookworm (workspace rust-version {rust_version})")
    if not any("musl-tools" in r and MUSL in r for r in build.all("RUN")):
        report.fail(f"build stage must install musl-tools and add the {MUSL} target")
    workdir = next(iter(build.all("WORKDIR")), None)
    marked = [i.rest for i in build.instructions if i.word == "RUN" and "# build-command" in i.comment]
    if len(marked) != 1:
        report.fail(f"build stage needs exactly one RUN right after a `# build-command` comment, found {len(marked)}")
    else:
        words = [w for w in shlex.split(marked[0]) if not w.startswith("--mount=")]
        if words != ["deploy/gcp/build-static.sh"]:
            report.fail(f"the build-command RUN must run deploy/gcp/build-static.sh (and nothing else), found {' '.join(words)!r}")
        else:
            report.ok(f"build stage: `# build-command` RUN runs deploy/gcp/build-static.sh in WORKDIR {workdir}")

    script = build_script.splitlines()
    idx = [i for i, line in enumerate(script) if line.strip() == "# build-command"]
    if len(idx) != 1 or idx[0] + 1 >= len(script) or script[idx[0] + 1].strip() != CARGO_BUILD:
        report.fail(f"deploy/gcp/build-static.sh: the line after its one `# build-command` marker must be `{CARGO_BUILD}`")
    else:
        report.ok(f"deploy/gcp/build-static.sh: build command `{CARGO_BUILD}`")
    out_match = re.search(r"^out=(\S+)$", build_script, re.M)
    script_out = out_match.group(1) if out_match else None

    if not re.fullmatch(r"gcr\.io/distroless/static-debian1[2-9]:nonroot(@sha256:[0-9a-f]{64})?", final.image):
        report.fail(f"final stage must be gcr.io/distroless/static-debian12:nonroot (its CA certificates are the TLS trust store), found {final.image!r}")
    else:
        report.ok(f"final stage: {final.image}")
    copies = final.all("COPY")
    copy_dst = None
    if len(copies) != 1:
        report.fail(f"final stage must COPY exactly one thing (the binary), found {copies}")
    else:
        words = shlex.split(copies[0])
        opts = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        expected_src = f"{workdir.rstrip('/')}/{script_out}" if workdir and script_out else None
        if len(paths) != 2:
            report.fail(f"final stage COPY must name one source and one destination, found {paths}")
        elif opts != [f"--from={stage_name}"]:
            report.fail(f"final stage COPY must be --from={stage_name}, found {opts}")
        elif paths[0] != expected_src:
            report.fail(f"final stage COPYs {paths[0]}, but build-static.sh writes {expected_src} (WORKDIR + out)")
        else:
            copy_dst = paths[1]
            report.ok(f"final stage COPYs {paths[0]}, the file build-static.sh writes, to {copy_dst}")
    users = final.all("USER")
    if not users or users[-1] not in ("nonroot", "nonroot:nonroot", "65532", "65532:65532"):
        report.fail(f"final stage must end with USER nonroot, found {users}")
    if final.all("EXPOSE") != ["8080"]:
        report.fail(f"final stage must EXPOSE 8080, found {final.all('EXPOSE')}")
    entry = final.all("ENTRYPOINT")
    if len(entry) != 1 or entry[0] != f'["{copy_dst}"]':
        report.fail(f"ENTRYPOINT must be the exec form [\"{copy_dst}\"], found {entry}")
    else:
        report.ok(f"final stage: USER {users[-1] if users else None}, EXPOSE {final.all('EXPOSE')}, ENTRYPOINT {entry[0]}")

    excluded = dockerignore_excluder(dockerignore)
    must_keep = ["Cargo.toml", "Cargo.lock", "deploy/gcp/build-static.sh", *sources]
    lost = [p for p in must_keep if excluded(p)]
    kept = [p for p in MUST_DROP if not excluded(p)]
    if lost:
        report.fail(f"/.dockerignore drops files the build needs: {lost[:5]}{' ...' if len(lost) > 5 else ''}")
    if kept:
        report.fail(f"/.dockerignore lets build output or local state into the context: {kept}")
    if not lost and not kept:
        report.ok(f"/.dockerignore keeps the manifests and {len(sources)} workspace files, drops target/, .venv, .git, node_modules, dist/")


def workspace_sources(cargo_toml: dict) -> list[str]:
    out = []
    for member in cargo_toml["workspace"]["members"]:
        out.append(f"{member}/Cargo.toml")
        for root, dirs, files in os.walk(member):
            dirs[:] = [d for d in dirs if d not in ("target", "node_modules")]
            out.extend(os.path.join(root, f) for f in files if f.endswith(".rs"))
    return out


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("spec", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    path = argv[1]
    if argv[0] == "spec":
        try:
            for line in spec(_read(path)):
                print(line)
        except SpecError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 1
        return 0
    report = Report("lint-gcp")
    with open("Cargo.toml", "rb") as f:
        cargo = tomllib.load(f)
    check(report, _read(path), _read("deploy/gcp/build-static.sh"), cargo, _read(".dockerignore"), workspace_sources(cargo))
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
