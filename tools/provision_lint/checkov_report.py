"""Judge a checkov JSON report, the same way for every lint.

checkov exits 0 even when it could not parse a file, and a run that read nothing passes, so
its report is judged here: any failed check, any parsing error, a framework that ran no check
(or passed none, where one must), fewer files read than given, a skip without a written reason,
a ``checkov:skip`` comment that checkov did not report (stale), a Terraform resource block
checkov did not build, and any secrets finding fail. Every skip is printed with its reason.

    python -m provision_lint.checkov_report --prefix lint-gcp --status $? REPORT.json \
        [--require FRAMEWORK]... [--require-passed FRAMEWORK]... [--min-files N] \
        [--skips-in FILE]... [--bom CYCLONEDX.json --terraform-dir DIR]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from typing import Any

from .report import Report

MIN_REASON = 20
SKIP_COMMENT = re.compile(r"checkov:skip=(CKV2?_[A-Z0-9]+_\d+)")


def load(path: str) -> list[dict[str, Any]]:
    """The reports in checkov's JSON output (one object, or a list of them, one per framework)."""
    if os.path.isdir(path):
        path = os.path.join(path, "results_json.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    reports = data if isinstance(data, list) else [data]
    return [r for r in reports if isinstance(r, dict) and "check_type" in r]


def judge(
    report: Report,
    reports: list[dict[str, Any]],
    status: int = 0,
    require: tuple[str, ...] = (),
    require_passed: tuple[str, ...] = (),
    min_files: int = 0,
    skip_sources: tuple[str, ...] = (),
    bom: dict[str, Any] | None = None,
    declared_resources: set[str] | None = None,
) -> None:
    by_type = {r["check_type"]: r for r in reports}
    for framework in require:
        if framework not in by_type:
            report.fail(f"checkov ran no {framework} checks")
    files: set[str] = set()
    skipped_ids: set[str] = set()
    totals = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0}
    for r in reports:
        kind = r["check_type"]
        results = r.get("results", {})
        summary = r.get("summary", {})
        for key in totals:
            totals[key] += int(summary.get(key, 0) or 0)
        for key in ("passed_checks", "failed_checks", "skipped_checks"):
            files.update(c.get("file_path", "") for c in results.get(key, []))
        for c in results.get("skipped_checks", []):
            skipped_ids.add(c["check_id"])
            reason = (c.get("check_result") or {}).get("suppress_comment") or ""
            where = c.get("resource") or f"{c.get('file_path')}:{(c.get('file_line_range') or [0])[0]}"
            if len(reason.strip()) < MIN_REASON:
                report.fail(f"{c['check_id']} on {where} ({c.get('file_path')}) is skipped without a written reason")
            else:
                report.skip(f"{c['check_id']} on {where}: {reason}")
        for c in results.get("failed_checks", []):
            lines = "-".join(map(str, c.get("file_line_range", [])))
            what = "a secret written into it?" if kind == "secrets" else c.get("check_name", "")
            report.fail(f"{kind} {c['check_id']} {c.get('resource', '')} ({c.get('file_path')}:{lines}): {what}")
        if summary.get("parsing_errors"):
            report.fail(f"checkov could not parse {summary['parsing_errors']} file(s) for {kind}: {summary.get('parsing_errors')}")
        if kind in require_passed and not summary.get("passed"):
            report.fail(f"checkov passed no {kind} check at all: nothing was checked")
    if len(files) < min_files:
        report.fail(f"checkov read {len(files)} of {min_files} files")
    written: set[str] = set()
    for path in skip_sources:
        with open(path, encoding="utf-8") as f:
            written.update(SKIP_COMMENT.findall(f.read()))
    for stale in sorted(written - skipped_ids):
        report.fail(f"checkov:skip={stale} is not a check checkov runs there (stale): remove it")
    if bom is not None and declared_resources is not None:
        seen = {re.sub(r"\[.*\]$", "", c.get("name", "")) for c in bom.get("components", [])}
        missing = sorted(declared_resources - seen)
        if missing:
            report.fail(f"checkov did not build these resources: {', '.join(missing)}")
        else:
            report.ok(f"checkov built all {len(declared_resources)} declared resource blocks")
    if status not in (0, 1):
        report.fail(f"checkov exited {status}")
    elif status == 1 and not totals["failed"]:
        report.fail("checkov exited 1 without a failed check")
    passed_ids = sorted({c["check_id"] for r in reports for c in r.get("results", {}).get("passed_checks", [])})
    report.note(
        f"checkov {', '.join(sorted(by_type)) or 'nothing'}: {totals['passed']} passed ({', '.join(passed_ids)}), "
        f"{totals['failed']} failed, {totals['skipped']} skipped, {totals['parsing_errors']} parsing errors, {len(files)} files"
    )


def terraform_resources(directory: str) -> set[str]:
    """``type.name`` of every resource block in DIRECTORY/*.tf (python-hcl2, checkov's parser)."""
    import hcl2

    declared: set[str] = set()
    for path in sorted(glob.glob(os.path.join(directory, "*.tf"))):
        with open(path, encoding="utf-8") as f:
            for block in hcl2.load(f).get("resource", []):
                for rtype, named in block.items():
                    declared.update(f"{rtype}.{name}" for name in named)
    return declared


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="checkov_report", description=__doc__.split("\n\n")[0])
    p.add_argument("report", help="checkov's JSON output (a file, or the --output-file-path directory)")
    p.add_argument("--prefix", default="checkov")
    p.add_argument("--status", type=int, default=0, help="checkov's exit code")
    p.add_argument("--require", action="append", default=[])
    p.add_argument("--require-passed", action="append", default=[])
    p.add_argument("--min-files", type=int, default=0)
    p.add_argument("--skips-in", action="append", default=[], help="a file whose checkov:skip comments must all be reported")
    p.add_argument("--bom", help="checkov's cyclonedx_json output")
    p.add_argument("--terraform-dir", help="with --bom: every resource block here must be in the BOM")
    args = p.parse_args(argv)
    report = Report(args.prefix)
    try:
        reports = load(args.report)
        bom = None
        if args.bom:
            with open(args.bom, encoding="utf-8") as f:
                bom = json.load(f)
    except (OSError, ValueError) as exc:
        report.fail(f"checkov produced no readable report (exit code {args.status}): {exc}")
        return 1
    judge(
        report,
        reports,
        status=args.status,
        require=tuple(args.require),
        require_passed=tuple(args.require_passed),
        min_files=args.min_files,
        skip_sources=tuple(args.skips_in),
        bom=bom,
        declared_resources=terraform_resources(args.terraform_dir) if args.terraform_dir else None,
    )
    if not report.problems:
        report.ok("checkov: no failed check, no parsing error, every skip with its reason")
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())
