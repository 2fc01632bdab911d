"""`mmtune data check`: every finding of every file, as a report (and as the --json object)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from mmtune.data.findings import Finding
from mmtune.data.reader import FileReader, ReadOptions


@dataclass
class FileReport:
    path: str
    format: str = ""
    kind: str = ""  # sft | preference | unpaired-preference | text
    rows: int = 0
    errors: int = 0
    warnings: int = 0
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "kind": self.kind,
            "rows": self.rows,
            "findings": [f.to_dict() for f in self.findings],
        }


def iter_findings(path: str, options: ReadOptions, report: FileReport) -> Iterator[Finding]:
    """Findings of one file as they are found (constant memory); fills `report`'s counts."""
    reader = FileReader(path, replace(options, samples=False))
    for result in reader:
        if not report.format:
            report.format, report.kind = reader.format, reader.kind
        yield from result.findings
    report.format, report.kind, report.rows = reader.format, reader.kind, reader.rows
    report.errors, report.warnings = reader.errors, reader.warnings


def check_file(path: str, options: ReadOptions | None = None,
               on_finding: Callable[[Finding], None] | None = None) -> FileReport:
    """Check one file. Findings go to `on_finding` when given (streaming), else into the report."""
    report = FileReport(path)
    for f in iter_findings(path, options or ReadOptions(), report):
        if on_finding is None:
            report.findings.append(f)
        else:
            on_finding(f)
    return report


def exit_status(errors: int, warnings: int, fail_on_warnings: bool) -> int:
    """0: no errors; 2: errors; 1: only warnings and --fail-on-warnings."""
    if errors:
        return 2
    return 1 if warnings and fail_on_warnings else 0
