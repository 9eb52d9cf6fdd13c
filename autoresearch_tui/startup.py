"""The composition root: from parsed flags to a running supervisor -- configuration, GPUs,
repository, lock, store, proposer, then the engine under a UI or headless. Every problem a user
can cause ends here as one sentence and exit code 2; a failure of ours leaves a traceback in
the log and exit code 1."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from agents.llm import Client
from agents.llm_proposer import LlmProposer
from agents.mutator import OfflineMutator
from agents.prices import priced
from agents.spending import Purse
from results import constraints
from results.store import Store, StoreError
from scheduler import config as cfg
from scheduler.engine.control import install_signal_handlers
from scheduler.engine.inbox import AgentCallsMade, ClusterReach, Inbox, MemoryToWrite
from scheduler.engine.supervisor import Supervisor
from scheduler.gpus import GpuSpecError, discover
from scheduler.runs.key_sources import KEYRING_SERVICE, VARIABLES, KeySource, KeySourceError, provider_key
from scheduler.runs.keys import make_undumpable, take_provider_keys
from scheduler.runs.sandbox import SandboxChoice, SandboxMode, SandboxUnavailable, choose
from scheduler.runs.workspace import Workspace, WorkspaceError

from .demo import DEMO_KNOBS, DemoError, demo_config, prepare_data
from .headless import JsonLinesPrinter
from .lock import AlreadyRunning, SupervisorLock
from .notify import Destination, Notifier, NotifyError

log = logging.getLogger("autoresearch")

_FLAG_NAMES = ("gpus", "agent", "base_url", "context_tokens", "key_file", "key_command", "max_cost", "budget", "max_experiments", "plateau", "notify",
               "confirm", "confirm_runs", "tag", "db", "review", "noise_floor",
               "baseline_runs", "keep_rule", "hung_seconds", "timeout_seconds", "seed", "sandbox", "sandbox_read",
               "mcp", "mcp_port", "mcp_host", "claim_seconds", "executor", "ray_address")


class UsageError(Exception):
    pass


def _config(args: argparse.Namespace) -> cfg.Config:
    file_values = cfg.load_file(args.config) if args.config else {}
    flags = {name: getattr(args, name) for name in _FLAG_NAMES}
    flags["repo"] = args.repo
    flags["no_ui"], flags["demo"], flags["resume"] = args.no_ui, args.demo, args.resume
    flags["confirm_only"] = getattr(args, "confirm_only", False)
    flags["target"] = {"editable": args.editable, "command": args.target_command,
                       "constraints": _constraint_flags(args)}
    config = cfg.build(file_values, flags)
    if args.demo:
        given = {k for k, v in flags.items() if v is not None} | {k for k in file_values if k != "target"}
        config = demo_config(config, given, Path.cwd() / ".autoresearch" / "demo")
    return config


def _constraint_flags(args: argparse.Namespace) -> dict[str, float] | None:
    """--max-vram-mb, --max-params-m and every --constraint KEY<=MAX, as the [target] table's
    constraints (they override the file's for the same key)."""
    limits = {}
    if args.max_vram_mb is not None:
        limits["peak_vram_mb"] = args.max_vram_mb
    if args.max_params_m is not None:
        limits["num_params_M"] = args.max_params_m
    for text in args.constraint or ():
        try:
            limit = constraints.parse(text)
        except ValueError as e:
            raise cfg.ConfigError(f"{e}.") from None
        limits[limit.key] = limit.ceiling
    return limits or None


def _logging(log_file: Path, console: bool = True) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if console:  # not under the TUI: a line on the terminal would tear its screen
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full = logging.FileHandler(log_file)  # tracebacks included, for the morning after
    full.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(full)
    if console:
        handler.addFilter(_no_http_requests)


def _no_http_requests(record: logging.LogRecord) -> bool:
    """The HTTP library's line per request (httpx, or httpx2 under the current SDKs) and the MCP
    server's own chatter would drown the research on the terminal; the log file keeps them."""
    return record.levelno >= logging.WARNING or not record.name.startswith(("httpx", "httpcore", "mcp", "uvicorn"))


def _proposer(config: cfg.Config, keys: dict[str, str], workspace: Workspace):
    if config.agent == "external":  # coding agents through the MCP server (external/)
        from external.lanes import ExternalProposer

        return ExternalProposer(workspace.changed_files, workspace.checkout, claim_timeout_s=config.claim_seconds)
    if config.agent == "offline":
        return OfflineMutator(seed=config.seed, include=DEMO_KNOBS if config.demo else None)
    provider, model = config.agent.split(":", 1)
    key = VARIABLES[provider]
    # The key as key_sources found it (a file, a command, the keyring, else the environment,
    # taken out of it at start); a local OpenAI-compatible server (--base-url) usually needs none.
    if not keys.get(key) and not (provider == "openai" and config.base_url):
        raise UsageError(f"--agent {config.agent} needs a key: --key-file PATH, key_command, the keyring "
                         f"(`keyring set {KEYRING_SERVICE} {key}`) or {key} in the environment.")
    client = Client(provider, model, base_url=config.base_url, context_tokens=config.context_tokens,
                    purse=_purse(config), api_key=keys.get(key))
    return LlmProposer(client)  # attach() tells it the number of lanes


def _provider_key(config: cfg.Config, keys: dict[str, str]):
    """The LLM agent's key from the first source that has it (scheduler/runs/key_sources.py);
    None for agents that need none."""
    if config.agent in ("offline", "external") or ":" not in config.agent:
        return None
    return provider_key(config.agent.split(":", 1)[0], key_file=config.key_file, key_command=config.key_command,
                        environment=keys)


def _key_note(found, sandbox: SandboxChoice) -> str:
    """What the started notice says of the key: where it came from, and the truth about the
    environment's copies, which this process cannot take back from the processes that started it."""
    said = f"the provider key: {found.said()}"
    if found.source is not KeySource.ENVIRONMENT:
        return said + ", in no process environment"
    hidden = ("the sandbox hides those processes from the runs" if sandbox.active
              else "a run can read them, since runs are not sandboxed")
    return (said + ": this process holds no copy in its environment, but the processes that started it "
                   f"(the shell, uv) still do; {hidden}; --key-file, key_command or the keyring avoid that")


def _purse(config: cfg.Config) -> Purse | None:
    """The session's spending limit; a limit on a model without a known price is refused."""
    if config.max_cost is None or config.agent in ("offline", "external"):
        return None
    provider, model = config.agent.split(":", 1)
    if not priced(provider, model, config.base_url):
        raise UsageError(f"--max-cost needs the price of {config.agent}, and the price database knows none "
                         f"for it{' at ' + config.base_url if config.base_url else ''}; run without --max-cost, "
                         f"or use a model it prices.")
    return Purse(config.max_cost)


def supervise(args: argparse.Namespace, keys: dict[str, str] | None = None, undumpable: bool | None = None) -> int:
    """`keys`, `undumpable`: what the command line's entry point did before importing this
    module (gitpython runs `git version` as it is imported); done here if it did not."""
    if keys is None:
        keys, undumpable = take_provider_keys(), make_undumpable()
    try:
        config = _config(args)
        _purse(config)  # before anything is written: a limit that cannot be kept is bad input
        found = _provider_key(config, keys)  # a key file or command that fails is bad input too
        if found is not None:
            keys = {**keys, found.variable: found.value}
        destinations = [Destination.parse(url) for url in config.notify]
        repo = (config.repo or Path(".")).resolve()
        if config.demo:
            prepare_data(repo)
        config = replace(config, repo=repo)
        store = Store(config.db_path)
    except (cfg.ConfigError, DemoError, StoreError, UsageError, NotifyError, KeySourceError) as e:
        return _usage(e)
    try:
        if not config.tag:
            latest = store.latest_tag() if config.resume else None
            if config.resume and latest is None:
                raise UsageError(f"--resume: the log {store.path} has no research line to resume; start one with --tag.")
            config = cfg.validate(replace(config, tag=latest or cfg.default_tag()))
        cluster, executor = None, None
        if config.executor == "ray":
            cluster, gpus = _ray_lanes(config)
            executor = cluster.executor(config.target.command)
            sandbox = SandboxChoice(None, "runs on Ray nodes, as the Ray worker's user", SandboxMode.NONE)
        else:
            gpus = discover(config.gpus)
            sandbox = choose(SandboxMode(config.sandbox), repo,
                             tuple(Path(p).expanduser() for p in config.sandbox_read))
        workspace = Workspace(repo, config.tag, config.target.editable)
        proposer = _proposer(config, keys, workspace)
        lock = SupervisorLock(repo / ".autoresearch" / "locks", config.tag).acquire()
    except (cfg.ConfigError, GpuSpecError, UsageError, WorkspaceError, AlreadyRunning, SandboxUnavailable) as e:
        store.close()
        return _usage(e)
    _logging(repo / ".autoresearch" / "logs" / config.tag / "supervisor.log", console=config.no_ui)
    log.info("provider keys: %s out of the environment; this process is %s", len(keys) or "none",
             "non-dumpable (same-user processes cannot read its /proc entries)" if undumpable
             else "dumpable (prctl not available here)")
    if cluster is not None:
        try:  # logged: preparing a node's data can take minutes, and it says which node is slow
            _nodes_ready(cluster, executor, workspace, aloud=not config.no_ui)
        except (UsageError, WorkspaceError) as e:
            cluster.close()
            store.close()
            lock.release()
            return _usage(e)
    printer = JsonLinesPrinter(sys.stdout if config.no_ui else None, config.metric)
    listeners: list = []  # sinks that join once the engine exists (the external agents' view)
    notifier = Notifier(destinations, config.tag, config.metric, tuple(keys.values())) if destinations else None
    if notifier is not None:
        log.info("notifications: %s", ", ".join(f"{d.style.value} to {d.shown}" for d in destinations))
        printer = _both(printer, notifier)  # it only queues: delivery is on its own threads
    sink = _both(printer, lambda event: [listener(event) for listener in listeners])
    inbox, door = Inbox(), None
    try:
        announce: tuple[str, ...] = ()
        if config.serves_agents:
            door, announce = _open_door(config, store, workspace, gpus, proposer, inbox, listeners)
        if found is not None:
            announce = (*announce, _key_note(found, sandbox))

        def engine(events_sink):
            supervisor = Supervisor(config, store, workspace, gpus, proposer, events_sink, sandbox=sandbox,
                                    inbox=inbox, announce=announce, on_close=(door.stop,) if door else (),
                                    executor=executor, telemetry=cluster.telemetry if cluster else True)
            if cluster is not None:  # from now on, a cluster that stops answering is the engine's to handle
                cluster.watch(lambda reach, why: inbox.put(ClusterReach(reach, why)), config.ray_lost_after)
            for listener in listeners:
                listener.started(supervisor.frontier)
            return supervisor

        if config.no_ui:
            supervisor = engine(sink)
            install_signal_handlers(supervisor.submit)
            code = supervisor.run()
        else:
            # The composition root is the one module outside tui/ that names it, and only here,
            # lazily: --no-ui never imports textual (tests/test_tui_layering.py allows exactly this).
            from tui.launch import run_tui

            code = run_tui(lambda ui: engine(_both(sink, ui)), config, store,
                           agents_url=door.endpoint.url if door else None)
        if config.demo and code == 0:
            log.info("the log: autoresearch-tui report --db %s   the code: git -C %s log %s",
                     config.db_path, repo, workspace.branch)
        return code
    except UsageError as e:
        return _usage(e)
    except Exception:  # noqa: BLE001 - ours: the traceback goes to the log, the data stays
        log.exception("the supervisor failed")
        return 1
    finally:
        if notifier is not None:  # the end of the night goes out before the process does
            notifier.close()
        if door is not None:
            door.stop()
        if cluster is not None:
            cluster.close()
        store.close()
        lock.release()


def _ray_lanes(config: cfg.Config):
    """The lanes on a Ray cluster's GPUs (scheduler/cluster/raycluster.py), one placement group bundle each."""
    try:
        from scheduler.cluster.raycluster import ClusterError, RayCluster
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'autoresearch-tui[ray]' (on every node too).") from None
    try:
        cluster = RayCluster(config.ray_address)
        return cluster, cluster.lanes(config.gpus)
    except ClusterError as e:
        raise UsageError(str(e)) from None


def _nodes_ready(cluster, executor, workspace: Workspace, aloud: bool) -> None:
    """Every node has the data its lanes' runs read, or prepares it, before any lane starts; a node
    that cannot is named with what it lacks (exit 2). `aloud`: also on the terminal (before the
    TUI, which would show nothing while a node prepares)."""
    from scheduler.cluster.raycluster import ClusterError

    start = workspace.starting_point()
    line = (f"checking the data on {len(cluster.nodes())} Ray node(s) (prepare.py --check there; "
            f"prepared where it is missing)")
    log.info("%s", line)
    if aloud:
        print(line, file=sys.stderr)
    try:
        found = cluster.ready(executor, workspace.root, start, dict(os.environ))
    except ClusterError as e:
        raise UsageError(str(e)) from None
    lanes = cluster.nodes()
    for node in found:
        on = f"node {node.host} ({node.node_id[:8]}; lane(s) {', '.join(map(str, lanes.get(node.node_id, [])))})"
        if not node.ready:
            tail = f"; prepare.py there said: {node.output.splitlines()[-1]}" if node.output else ""
            raise UsageError(f"{on} lacks the {node.profile} data its runs read: {node.detail}{tail}; run "
                             f"`{' '.join(node.prepare_command)}` on that node.")
        log.info("%s: %s%s", on, node.detail, " (prepared there now)" if node.prepared else "")


def _open_door(config: cfg.Config, store: Store, workspace: Workspace, gpus, proposer, inbox: Inbox,
               listeners: list):
    """The MCP server for external agents (external/), started before the engine so that its
    URL is in the started notice; its record of calls and its memories go to the engine's inbox."""
    from external.calls import CallLog
    from external.lanes import ExternalProposer
    from external.server import Lab, McpThread
    from external.view import LabView

    view = LabView(config.tag, [(g.lane, g.name) for g in gpus], "", config.metric, budget_s=config.budget,
                   max_experiments=config.max_experiments, max_cost=config.max_cost,
                   constraints=config.target.constraints)
    view.seed(store.experiments(tag=config.tag))
    listeners.append(view)
    lab = Lab(view, proposer if isinstance(proposer, ExternalProposer) else None, config.target.editable,
              config.repo, recall=lambda query, k: [m.text for m in store.recall(query, k)],
              remember=lambda text, tags, author: inbox.put(MemoryToWrite(text, tags, author)),
              record=CallLog(lambda calls: inbox.put(AgentCallsMade(calls))),
              read_run=lambda experiment_id: store.run_evidence(experiment_id, config.metric, workspace.diff))
    door = McpThread(lab, config.repo / ".autoresearch", host=config.mcp_host, port=config.mcp_port)
    try:
        door.start()
    except OSError as e:
        raise UsageError(f"the MCP server cannot listen on {config.mcp_host}:{config.mcp_port}: {e.strerror}; "
                         f"choose another --mcp-port.") from None
    line = f"external agents: MCP server at {door.endpoint.url} (its token in {door.endpoint.file})"
    if config.mcp_host not in ("127.0.0.1", "localhost", "::1"):
        line += "; it listens beyond this machine, guarded by its token alone"
        log.warning("the MCP server listens on %s: other machines can reach it, guarded by its token alone",
                    config.mcp_host)
    return door, (line,)


def _both(first, second):
    """Under the TUI, every event also goes to the log file, as a human line."""
    def sink(event) -> None:
        first(event)
        second(event)
    return sink


def _usage(error: Exception) -> int:
    print(f"autoresearch-tui: {error}", file=sys.stderr)
    return 2
