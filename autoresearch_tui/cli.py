"""The `autoresearch-tui` command."""

from __future__ import annotations

import argparse
import shutil
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
                     description="Run autonomous LLM-training research on every GPU of this machine. "
                                 "`autoresearch-tui report --help` for the experiment log.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--demo", action="store_true",
                        help="two CPU lanes, the offline mutator and a short budget on a throwaway repository "
                             "under ./.autoresearch/demo (no GPU, key or internet needed)")
    parser.add_argument("--no-ui", action="store_true",
                        help="headless: one JSON object per line on stdout, a human log on stderr")
    parser.add_argument("--gpus", help="auto (every GPU), 0,2,3 (these), or cpu:N (N CPU lanes); default auto")
    parser.add_argument("--agent", help="offline (the hyperparameter mutator), anthropic:MODEL, openai:MODEL, or "
                                        "external (coding agents such as Claude Code or Codex, through the MCP "
                                        "server)")
    parser.add_argument("--base-url", help="the LLM provider's endpoint, for a proxy or a local server")
    parser.add_argument("--context-tokens", type=int, metavar="N",
                        help="the model's context window in tokens (default: asked of the server, else 200k for "
                             "anthropic, 128k for openai, 8192 for another OpenAI-compatible server)")
    _key_arguments(parser)
    parser.add_argument("--max-cost", type=float, metavar="USD",
                        help="the most this session may spend on LLM calls, in US dollars: then the lanes stop "
                             "proposing, and the runs under way finish and are judged")
    parser.add_argument("--budget", type=float, metavar="SECONDS", help="training seconds per experiment "
                        "(default: the trainer's own, 300 on a GPU)")
    parser.add_argument("--max-experiments", type=int, metavar="N", help="stop after starting N runs")
    parser.add_argument("--plateau", type=int, metavar="N",
                        help="after N judged experiments without a keep, warn and ask the proposers for another "
                             "direction; after N more, end the night (default 30; 0: never)")
    parser.add_argument("--confirm", type=int, dest="confirm_runs", metavar="N",
                        help="at the end, run the frontier and the start N times each, side by side, for the claim "
                             "(default: as many as the measured noise asks, 2 to 8)")
    parser.add_argument("--no-confirm", dest="confirm", action="store_false", default=None,
                        help="end without measuring the claim")
    parser.add_argument("--notify", action="append", metavar="URL",
                        help="POST each keep, plateau, lost lane, spending limit and the night's end to URL as "
                             "JSON (repeatable; slack:URL for a Slack webhook, ntfy:URL for an ntfy topic)")
    parser.add_argument("--tag", help="the research line: branch autoresearch/TAG (default: today, e.g. nov20); "
                        "the same tag again resumes it")
    parser.add_argument("--repo", type=Path, help="the repository to research on (default: here)")
    parser.add_argument("--db", type=Path, help="the experiment log (default REPO/.autoresearch/results.duckdb)")
    parser.add_argument("--review", action="store_true", default=None,
                        help="hold every proposal until a person approves it")
    parser.add_argument("--resume", action="store_true",
                        help="go on with the latest tag in the log (runs a crash interrupted are run again)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="a TOML file of these settings")
    parser.add_argument("--noise-floor", type=float, help="the least improvement ever kept (default 0.001)")
    parser.add_argument("--baseline-runs", type=int, help="runs of the starting point per GPU model, spread over "
                        "the lanes, before anything is judged (default: two per lane, at least 4)")
    parser.add_argument("--keep-rule", choices=["noise", "greedy"],
                        help="noise: keep only beyond run-to-run noise, re-test close calls (default); greedy: "
                             "upstream's rule, keep any measured improvement (for comparison)")
    parser.add_argument("--hung-seconds", type=float, help="stop a run silent this long (default 600)")
    parser.add_argument("--timeout", type=float, dest="timeout_seconds", metavar="SECONDS",
                        help="stop a run this long after it started (default: twice the budget plus 120)")
    parser.add_argument("--editable", action="append", metavar="PATH",
                        help="a file the agents may edit (repeatable; default trainer/train.py)")
    parser.add_argument("--command", dest="target_command", help="the training command, run in the worktree "
                        "(default `python -m trainer.train`; `python` is this interpreter)")
    parser.add_argument("--max-vram-mb", type=float, metavar="MB",
                        help="discard a run whose peak VRAM passes this (constraint on peak_vram_mb)")
    parser.add_argument("--max-params-m", type=float, metavar="M",
                        help="discard a run whose model has more parameters, in millions (num_params_M)")
    parser.add_argument("--constraint", action="append", metavar="KEY<=MAX",
                        help="discard a run whose summary KEY passes MAX, e.g. artifact_bytes<=16000000 (repeatable)")
    parser.add_argument("--seed", type=int, help="the offline mutator's seed (default 0)")
    _sandbox_arguments(parser)
    parser.add_argument("--executor", choices=["local", "ray"],
                        help="where runs happen: local (this machine's GPUs; the default) or ray (the GPUs of a "
                             "Ray cluster; pip install 'autoresearch-tui[ray]')")
    parser.add_argument("--ray-address", metavar="HOST:PORT",
                        help="the Ray cluster to join (default auto: RAY_ADDRESS or the cluster this machine is in)")
    parser.add_argument("--mcp", action="store_true", default=None,
                        help="host the MCP server for external agents beside the session's own agent "
                             "(--agent external implies it)")
    parser.add_argument("--mcp-port", type=int, metavar="N", help="the MCP server's port (default: a free one)")
    parser.add_argument("--mcp-host", metavar="HOST",
                        help="where the MCP server listens (default 127.0.0.1; anything else is reachable from "
                             "other machines, guarded by the token alone)")
    parser.add_argument("--claim-seconds", type=float, dest="claim_seconds", metavar="SECONDS",
                        help="an external agent's claim on a lane lapses after this long without a submission "
                             "(default 1800)")
    return parser


def build_doctor_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autoresearch-tui doctor",
                     description="Check everything a night needs (machine, GPUs, data, target, a smoke run of the "
                                 "trainer on every lane, the LLM agent) and say what fixes what fails. "
                                 "Exit 0: a night can run; 1: something blocks it.")
    parser.add_argument("--repo", type=Path, help="the repository to research on (default: here)")
    parser.add_argument("--gpus", help="auto (every GPU), 0,2,3 (these), or cpu:N; default auto")
    parser.add_argument("--agent", help="offline, anthropic:MODEL or openai:MODEL")
    parser.add_argument("--base-url", help="the LLM provider's endpoint, for a proxy or a local server")
    parser.add_argument("--context-tokens", type=int, metavar="N", help="the model's context window in tokens")
    _key_arguments(parser)
    parser.add_argument("--tag", help="the research line whose frontier branch to look at")
    parser.add_argument("--editable", action="append", metavar="PATH", help="a file the agents may edit")
    parser.add_argument("--command", dest="target_command", help="the training command")
    parser.add_argument("--config", type=Path, metavar="FILE", help="a TOML file of settings")
    parser.add_argument("--executor", choices=["local", "ray"], help="check this machine (local) or a Ray cluster "
                                                                     "(its nodes, their lanes and data)")
    parser.add_argument("--ray-address", metavar="HOST:PORT", help="the Ray cluster to check (default auto)")
    _sandbox_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="skip the smoke run (seconds instead of a minute)")
    parser.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    return parser


def _key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-file", type=Path, metavar="PATH",
                        help="read the provider key from this file (mode 600) instead of the environment")
    parser.add_argument("--key-command", metavar="CMD",
                        help="run CMD once at start for the provider key (e.g. 'pass show openai')")


def _sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sandbox", choices=["auto", "bwrap", "none"],
                        help="confine each training run with bubblewrap: auto (where it works; the default), "
                             "bwrap (insist) or none")
    parser.add_argument("--sandbox-read", action="append", metavar="PATH",
                        help="a path a sandboxed run may also read (the home is hidden but for the data cache)")


def doctor(argv: list[str]) -> int:
    from dataclasses import replace

    from scheduler import config as cfg
    from .doctor import diagnose

    args = build_doctor_parser().parse_args(argv)
    try:
        file_values = cfg.load_file(args.config) if args.config else {}
        flags = {name: getattr(args, name) for name in ("gpus", "agent", "base_url", "context_tokens", "tag",
                                                        "sandbox", "sandbox_read", "executor", "ray_address",
                                                        "key_file", "key_command")}
        flags["target"] = {"editable": args.editable, "command": args.target_command}
        config = cfg.build(file_values, flags)
    except cfg.ConfigError as e:
        print(f"autoresearch-tui doctor: {e}", file=sys.stderr)
        return 2
    config = replace(config, repo=(args.repo or Path(".")).resolve())
    result = diagnose(config, quick=args.quick)
    sys.stdout.write(result.json() if args.json else result.table())
    return 0 if result.ok else 1


def build_report_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autoresearch-tui report",
                     description="Show or export the experiment log (works while a supervisor is writing).")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"the log (default {DEFAULT_DB})")
    parser.add_argument("--format", choices=["table", "tsv", "json"], default="table",
                        help="table: a leaderboard; tsv: upstream's results.tsv; json: every experiment")
    parser.add_argument("--run", help="only this run id")
    parser.add_argument("--limit", type=int, default=30, help="leaderboard rows (0: all)")
    parser.add_argument("--tree", action="store_true",
                        help="the research as a tree: each frontier and what was tried on it (the latest tag's "
                             "sessions, or --run's)")
    parser.add_argument("--parquet", type=Path, metavar="DIR", help="also export every table to DIR/*.parquet")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw the progress plot")
    parser.add_argument("--bundle", type=Path, metavar="DIR",
                        help="write a claim to hand on into DIR (new or empty): the patch from the start to the "
                             "frontier, results, the claim, the kept changes, the plot, the environment and a README "
                             "that reproduces it (the latest tag's, or --run's)")
    parser.add_argument("--repo", type=Path, metavar="PATH",
                        help="with --bundle: the research repository (default: the one the log's sessions ran in)")
    parser.add_argument("--git-branch", action="store_true",
                        help="with --bundle: also commit the bundle on a branch claims/<tag> on top of the frontier")
    return parser


def report(argv: list[str]) -> int:
    from results import report as fmt
    from results.store import Reader, StoreError

    args = build_report_parser().parse_args(argv)
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        print(f"autoresearch-tui report: --plot needs a .png file name, not {args.plot}.", file=sys.stderr)
        return 2
    if (args.repo is not None or args.git_branch) and args.bundle is None:
        print("autoresearch-tui report: --repo and --git-branch go with --bundle DIR.", file=sys.stderr)
        return 2
    try:
        with Reader(args.db) as reader:
            metric = reader.metric(args.run)
            if args.bundle is not None:
                from results.bundle import BundleError, write_bundle

                try:
                    written = write_bundle(reader, args.bundle, args.run, args.repo, args.git_branch)
                except BundleError as e:
                    print(f"autoresearch-tui report: {e}", file=sys.stderr)
                    return 2
                for path in written.files:
                    print(f"wrote {path}", file=sys.stderr)
                if written.branch:
                    print(f"committed the bundle as {written.commit[:12]} on {written.branch}", file=sys.stderr)
                return 0
            if args.tree:
                sys.stdout.write(_tree_text(reader, args.run, metric))
            elif args.format == "table":
                rows = reader.leaderboard(args.run, args.limit or None)
                note = " (live: from the latest snapshot)" if reader.live else ""
                sys.stdout.write(f"{args.db}{note}: {metric.label}\n" + fmt.leaderboard_table(rows, metric=metric)
                                 + fmt.noise_lines(reader.noise(args.run))
                                 + fmt.spending_lines(reader.spending(args.run))
                                 + fmt.claim_lines(reader.claims(args.run)))
            elif args.format == "tsv":
                sys.stdout.write(fmt.results_tsv(reader.experiments(args.run), metric))
            else:
                sys.stdout.write(fmt.experiments_json(reader.experiments(args.run)))
            if args.parquet is not None:
                written = reader.export_parquet(args.parquet)
                print(f"wrote {len(written)} tables to {args.parquet}", file=sys.stderr)
            if args.plot is not None:
                fmt.progress_plot(reader.experiments(args.run), args.plot, metric=metric)
                print(f"wrote {args.plot}", file=sys.stderr)
    except StoreError as e:
        print(f"autoresearch-tui report: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"autoresearch-tui report: cannot write {e.filename}: {e.strerror}.", file=sys.stderr)
        return 2
    return 0


def _tree_text(reader, run: str | None, metric) -> str:
    from results import tree

    tag = None if run else reader.latest_tag()
    experiments = reader.experiments(run, tag)
    title = f"run {run}" if run else f"tag {tag}" if tag else "the log"
    width = shutil.get_terminal_size((200, 24)).columns if sys.stdout.isatty() else None
    return f"{title}: {metric.label}\n" + tree.text(tree.build(experiments, reader.frontier_moves(run, tag), metric),
                                                    width)


def build_agent_files_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autoresearch-tui agent-files",
                     description="Write what starts an external coding agent as the lab's researchers "
                                 "(run the lab with --agent external).")
    parser.add_argument("--for", dest="kind", required=True, choices=["claude", "codex"],
                        help="claude: .mcp.json, an experiment-worker subagent and a /research orchestrator; "
                             "codex: .codex/config.toml and AGENTS.md")
    parser.add_argument("--dir", type=Path, default=Path("."), help="where to write them (default: here)")
    parser.add_argument("--force", action="store_true", help="replace files that exist and differ")
    return parser


def agent_files(argv: list[str]) -> int:
    from external.files import AgentFilesError, agent_files as files_for, how_to_start, write

    args = build_agent_files_parser().parse_args(argv)
    try:
        written = write(files_for(args.kind), args.dir, force=args.force)
    except AgentFilesError as e:
        print(f"autoresearch-tui agent-files: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"autoresearch-tui agent-files: cannot write {e.filename}: {e.strerror}.", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(how_to_start(args.kind, args.dir.resolve()), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent-files"]:
        return agent_files(argv[1:])
    if argv[:1] == ["report"]:
        return report(argv[1:])
    if argv[:1] == ["doctor"]:
        return doctor(argv[1:])
    # Before anything is imported that starts a helper (gitpython runs `git version` on import):
    # the provider keys leave the environment, and this process becomes non-dumpable.
    from scheduler.runs.keys import make_undumpable, take_provider_keys

    keys, undumpable = take_provider_keys(), make_undumpable()
    from .startup import supervise  # the engine's imports are heavier than report's

    if argv[:1] == ["confirm"]:  # the claim alone, on the latest research line (or --tag's)
        parser = build_parser()
        parser.prog = "autoresearch-tui confirm"
        parser.description = ("Measure the claim of a research line: its frontier and its starting commit run side "
                              "by side, and the gain is reported with a 95% confidence interval.")
        args = parser.parse_args(argv[1:])
        args.confirm_only, args.resume = True, args.resume or not args.tag
        return supervise(args, keys, undumpable)
    return supervise(build_parser().parse_args(argv), keys, undumpable)


if __name__ == "__main__":
    sys.exit(main())
