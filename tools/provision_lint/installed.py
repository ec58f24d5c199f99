"""Whether a virtualenv holds exactly the pinned packages: exit 0 if so, 1 (naming what differs) if not.

    python -m provision_lint.installed checkov==3.3.30 tree-sitter==0.26.1 ...
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys


def differences(pins: list[str]) -> list[str]:
    out = []
    for pin in pins:
        name, _, wanted = pin.partition("==")
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != wanted:
            out.append(f"{name} {have or 'missing'} (wanted {wanted})")
    return out


def main(argv: list[str]) -> int:
    missing = differences(argv)
    for line in missing:
        print(line)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
