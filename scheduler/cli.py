"""The `autoresearch-tui` command."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("autoresearch-tui")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoresearch-tui",
        description="Run autonomous LLM-training research on every GPU of this machine.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    # The supervisor (lanes, agents, the store) is not part of this release yet; say so plainly
    # rather than pretend to run.
    print("autoresearch-tui: the supervisor is not built yet; for now run "
          "`uv run prepare.py --tiny` then `uv run python -m trainer.train`.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
