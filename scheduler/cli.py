"""The `autoresearch-tui` command."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DEFAULT_DB = Path(".autoresearch") / "results.duckdb"


def _version() -> str:
    try:
        return version("autoresearch-tui")
    except PackageNotFoundError:
        return "unknown"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line and exit code 2, as for every bad input
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autoresearch-tui",
                     description="Run autonomous LLM-training research on every GPU of this machine.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def build_report_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autoresearch-tui report",
                     description="Show or export the experiment log (works while a supervisor is writing).")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"the log (default {DEFAULT_DB})")
    parser.add_argument("--format", choices=["table", "tsv", "json"], default="table",
                        help="table: a leaderboard; tsv: upstream's results.tsv; json: every experiment")
    parser.add_argument("--run", help="only this run id")
    parser.add_argument("--limit", type=int, default=30, help="leaderboard rows (0: all)")
    parser.add_argument("--parquet", type=Path, metavar="DIR", help="also export every table to DIR/*.parquet")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw the progress plot")
    return parser


def report(argv: list[str]) -> int:
    from results import report as fmt
    from results.store import Reader, StoreError

    args = build_report_parser().parse_args(argv)
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        print(f"autoresearch-tui report: --plot needs a .png file name, not {args.plot}.", file=sys.stderr)
        return 2
    try:
        with Reader(args.db) as reader:
            if args.format == "table":
                rows = reader.leaderboard(args.run, args.limit or None)
                note = " (live: from the latest snapshot)" if reader.live else ""
                sys.stdout.write(f"{args.db}{note}\n" + fmt.leaderboard_table(rows))
            elif args.format == "tsv":
                sys.stdout.write(fmt.results_tsv(reader.experiments(args.run)))
            else:
                sys.stdout.write(fmt.experiments_json(reader.experiments(args.run)))
            if args.parquet is not None:
                written = reader.export_parquet(args.parquet)
                print(f"wrote {len(written)} tables to {args.parquet}", file=sys.stderr)
            if args.plot is not None:
                fmt.progress_plot(reader.experiments(args.run), args.plot)
                print(f"wrote {args.plot}", file=sys.stderr)
    except StoreError as e:
        print(f"autoresearch-tui report: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"autoresearch-tui report: cannot write {e.filename}: {e.strerror}.", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        return report(argv[1:])
    build_parser().parse_args(argv)
    # The supervisor (lanes, agents) is not part of this release yet; say so plainly rather
    # than pretend to run.
    print("autoresearch-tui: the supervisor is not built yet; for now run "
          "`uv run prepare.py --tiny` then `uv run python -m trainer.train`, "
          "or `autoresearch-tui report` on an existing log.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
