"""Checking an uploaded data file with the data layer, as a hosted fine-tuning service would.

A chat (`openai` shape) `.jsonl` file is held to the hosted services' strict rule set; a
file in another shape mmtune reads (swift, llava, alpaca, or a JSON array) gets mmtune's
default rules. Only errors fail a job; warnings become one `warn` event. The result is
plain data, cached on the file's row (files never change after upload).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmtune.data.check import check_file
from mmtune.data.findings import ERROR
from mmtune.data.reader import ReadOptions
from mmtune.errors import UserError

KEEP_FINDINGS = 100  # findings kept per file (counts are exact)
SHOWN_IN_ERROR = 3  # errors quoted in a failed job's error.message


def check_upload(path: Path) -> dict[str, Any]:
    """{rules, format, rows, errors, warnings, findings[:KEEP_FINDINGS]} of one stored upload, in constant
    memory: findings stream past (the CLI's `data check` path) and only the first KEEP_FINDINGS errors and
    warnings are kept (errors first in the result); the counts are exact."""
    try:
        report, kept = _check(path, "default")
        rules = "default"
        if report.format == "openai" and path.suffix == ".jsonl":
            report, kept = _check(path, "strict")
            rules = "strict"
    except UserError as e:
        return {"rules": "default", "format": "", "rows": 0, "errors": 1, "warnings": 0,
                "findings": [{"severity": ERROR, "line": 0, "field": "", "rule": "unreadable", "message": str(e)}]}
    errors, warnings = kept
    findings = [*sorted(errors, key=lambda f: f.line), *sorted(warnings, key=lambda f: f.line)][:KEEP_FINDINGS]
    return {"rules": rules, "format": report.format, "rows": report.rows, "errors": report.errors,
            "warnings": report.warnings, "findings": [f.to_dict() for f in findings]}


def _check(path: Path, rules: str):
    errors: list = []
    warnings: list = []

    def keep(finding) -> None:
        bucket = errors if finding.is_error else warnings
        if len(bucket) < KEEP_FINDINGS:
            bucket.append(finding)

    report = check_file(str(path), ReadOptions(rules=rules), on_finding=keep)
    return report, (errors, warnings)


def describe(finding: dict[str, Any]) -> str:
    """`line 3, messages[1].role: <message> [rule role-not-allowed]`."""
    where = f"line {finding['line']}" if finding["line"] else "the file"
    if finding["field"]:
        where += f", {finding['field']}"
    return f"{where}: {finding['message']} [rule {finding['rule']}]"


def failure_message(param: str, file_row: dict[str, Any], check: dict[str, Any]) -> str:
    """error.message of a job whose `param` file has errors: the first few, by line and rule."""
    errors = [f for f in check["findings"] if f["severity"] == ERROR]
    shown = "; ".join(describe(f) for f in errors[:SHOWN_IN_ERROR])
    more = f"; and {check['errors'] - SHOWN_IN_ERROR} more" if check["errors"] > SHOWN_IN_ERROR else ""
    flag = " --rules strict" if check["rules"] == "strict" else ""
    return (f"{param} {file_row['id']} ({file_row['filename']}) has {check['errors']} error(s) under the "
            f"{check['rules']} rules: {shown}{more}. Fix the file (`mmtune data check{flag} FILE` lists every "
            "problem), upload it again and create a new job.")
