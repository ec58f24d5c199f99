"""One HTTP GET, for the scripts' readiness probes (scripts/check-image, scripts/schemathesis).

    python -m provision_lint.http_probe URL             # exit 0 if URL answers at all (any status)
    python -m provision_lint.http_probe --status 200 URL  # exit 0 only on that status

Prints "<status> <body>" when it got an answer; exits 1 when nothing answered (or another
status), within a one-second timeout.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def get(url: str, timeout: float = 1.0) -> tuple[int, str] | None:
    """(status, body) of a GET, an HTTP error status included; None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="http_probe")
    p.add_argument("url")
    p.add_argument("--status", type=int, help="the status that counts as ready (default: any)")
    p.add_argument("--timeout", type=float, default=1.0)
    args = p.parse_args(argv)
    answer = get(args.url, args.timeout)
    if answer is None:
        return 1
    print(answer[0], answer[1])
    return 0 if args.status is None or answer[0] == args.status else 1


if __name__ == "__main__":
    sys.exit(main())
