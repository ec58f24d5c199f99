"""One line per check, in the lints' common format: ``<prefix>: ok   ...`` / ``FAIL`` / ``skip``."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class Report:
    prefix: str
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def ok(self, line: str) -> None:
        self.checked.append(line)
        print(f"{self.prefix}: ok   {line}")

    def fail(self, line: str) -> None:
        self.problems.append(line)
        print(f"{self.prefix}: FAIL {line}")

    def skip(self, line: str) -> None:
        print(f"{self.prefix}: skip {line}")

    def note(self, line: str) -> None:
        print(f"{self.prefix}: {line}")

    def expect(self, what: str, value: object, wanted: object) -> bool:
        if value == wanted:
            self.ok(f"{what} = {wanted!r}")
            return True
        self.fail(f"{what} is {value!r}, expected {wanted!r}")
        return False

    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def exit(self) -> None:
        sys.stdout.flush()
        sys.exit(self.exit_code())
