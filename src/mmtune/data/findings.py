"""A finding: one problem in one row of a data file, located precisely enough to fix it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(slots=True)
class Finding:
    severity: str  # "error" (the row cannot train) | "warning" (it trains, probably not as meant)
    line: int  # 1-based line where the row starts; 0 for a finding about the whole file
    field: str  # e.g. "messages[2].role", "" for the whole row or file
    rule: str  # stable rule id, e.g. "unknown-role" (see docs/data.md)
    message: str  # what is wrong and how to fix it

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR


class Collector:
    """Collects findings for one row; parsers and rules report into it."""

    __slots__ = ("line", "findings", "once")

    def __init__(self, line: int, once: set | None = None):
        self.line = line
        self.findings: list[Finding] = []
        self.once = once if once is not None else set()  # keys already warned about in this file

    def warn_once(self, key: str, field: str, rule: str, message: str) -> None:
        """A warning given at the first row of a file it applies to (e.g. a key mmtune does not read)."""
        if (rule, key) not in self.once:
            self.once.add((rule, key))
            self.warn(field, rule, message + " (reported once per file, at the first row that has it)")

    def error(self, field: str, rule: str, message: str) -> None:
        self.findings.append(Finding(ERROR, self.line, field, rule, message))

    def warn(self, field: str, rule: str, message: str) -> None:
        self.findings.append(Finding(WARNING, self.line, field, rule, message))

    @property
    def has_errors(self) -> bool:
        return any(f.severity == ERROR for f in self.findings)
