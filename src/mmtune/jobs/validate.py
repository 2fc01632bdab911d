"""Checking an uploaded data file with the data layer, as a hosted fine-tuning service would.

A file is checked for the kind of data its job trains (`stage_kind`: a supervised job's
conversations, a dpo job's preference pairs, ...). A chat (`openai` shape) `.jsonl` file for
a supervised job is held to the hosted services' strict rule set; every other file (preference
pairs in OpenAI's preference format or any other, swift, llava, alpaca, a JSON array) gets
mmtune's default rules, which check each pair's prompt and both answers. A file of another
kind than its job's is refused when the job is created (`kind_problem`, a 400 naming the fix).
Only errors fail a job; warnings become one `warn` event. The result is plain data, cached
on the file's row (files never change after upload) with the kind it was checked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmtune.data.check import check_file
from mmtune.data.findings import ERROR
from mmtune.data.reader import KIND_OF_STAGE, KIND_WORDS, STAGE_OF_KIND, ReadOptions, file_kind
from mmtune.errors import UserError

KEEP_FINDINGS = 100  # findings kept per file (counts are exact)
SHOWN_IN_ERROR = 3  # errors quoted in a failed job's error.message


def stage_kind(stage: str) -> str:
    """The kind of data a job's stage trains: sft, preference, unpaired-preference or text."""
    return KIND_OF_STAGE[stage]


def check_upload(path: Path, kind: str = "sft") -> dict[str, Any]:
    """{rules, format, kind, checked_for, rows, errors, warnings, findings[:KEEP_FINDINGS]} of one stored
    upload checked for a job training `kind` data, in constant memory: findings stream past (the CLI's
    `data check` path) and only the first KEEP_FINDINGS errors and warnings are kept (errors first in the
    result); the counts are exact."""
    try:
        report, kept = _check(path, "default")
        rules = "default"
        if kind == "sft" and report.kind == "sft" and report.format == "openai" and path.suffix == ".jsonl":
            report, kept = _check(path, "strict")
            rules = "strict"
    except UserError as e:
        return {"rules": "default", "format": "", "kind": "", "checked_for": kind, "rows": 0, "errors": 1,
                "warnings": 0,
                "findings": [{"severity": ERROR, "line": 0, "field": "", "rule": "unreadable", "message": str(e)}]}
    errors, warnings = kept
    findings = [*sorted(errors, key=lambda f: f.line), *sorted(warnings, key=lambda f: f.line)][:KEEP_FINDINGS]
    return {"rules": rules, "format": report.format, "kind": report.kind, "checked_for": kind, "rows": report.rows,
            "errors": report.errors, "warnings": report.warnings, "findings": [f.to_dict() for f in findings]}


# what a job of each kind of data is created with (the fix a kind_problem names)
HOW_TO_TRAIN = {
    "sft": 'method={"type": "supervised"} (and no stage)',
    "preference": 'method={"type": "dpo"} (or extra_body stage simpo / orpo)',
    "unpaired-preference": 'method={"type": "dpo"} with extra_body {"stage": "kto"}',
    "text": 'method={"type": "supervised"} with extra_body {"stage": "pt"}',
}


def kind_problem(param: str, file_row: dict[str, Any], path: Path, stage: str) -> str | None:
    """Why `param`'s file cannot train a job of `stage` (it holds another kind of data), from its first rows;
    None when it can, or when it cannot be read (the full check reports that)."""
    try:
        _, kind = file_kind(str(path))
    except (UserError, OSError, ValueError):
        return None
    want = stage_kind(stage)
    if kind == want:
        return None
    return (f"{param} {file_row['id']} ({file_row['filename']}) holds {KIND_WORDS[kind]}, and this {stage} job "
            f"trains {KIND_WORDS[want]}: create the job with {HOW_TO_TRAIN[kind]} to train this file (`mmtune "
            f"jobs create --stage {STAGE_OF_KIND[kind]}`), or give the {stage} job a file of {KIND_WORDS[want]}")


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
