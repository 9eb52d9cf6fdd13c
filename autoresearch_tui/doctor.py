"""`autoresearch-tui doctor`: everything a night needs, checked before the night.

One line per check -- ✓, a warning, or ✗ with the one command or setting that fixes it -- in
the order a newcomer meets the problems: the machine (Python, torch, Triton, git, disk), the
GPUs (NVML: driver, cards, compute capability, other processes on them), the data the trainer
reads, the target repository, a smoke run of the trainer on every lane at once (scheduler/
smoke.py), and the LLM agent (its key, one minimal call, the context window). Exit code 0
when a night can run, 1 when something blocks it; bad flags are exit 2 as everywhere."""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from scheduler import config as cfg
from scheduler.gpus import Gpu, GpuSpecError, discover, driver_version
from scheduler.runs.key_sources import KEYRING_SERVICE, VARIABLES, KeySource, KeySourceError, provider_key
from scheduler.runs.sandbox import Sandbox, SandboxMode, SandboxUnavailable, choose
from scheduler.runs.workspace import WorkspaceError

MIN_FREE_GB = 1.0  # below this a night cannot even write its logs and checkpoints
LOW_FREE_GB = 10.0


class Verdict(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    FAIL = "fail"


MARK = {Verdict.OK: "✓", Verdict.WARNING: "!", Verdict.FAIL: "✗"}


@dataclass(frozen=True)
class Check:
    area: str  # machine | gpu | data | target | smoke | agent | ray
    name: str
    verdict: Verdict
    detail: str
    fix: str | None = None  # for a warning or a failure: the command or setting that fixes it
    figures: dict = field(default_factory=dict)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, *checks: Check) -> None:
        # A check that passed needs no fix, whatever its builder had ready for a failure.
        self.checks.extend(c if c.verdict is not Verdict.OK else replace(c, fix=None) for c in checks)

    @property
    def ok(self) -> bool:
        return not any(c.verdict is Verdict.FAIL for c in self.checks)

    def table(self) -> str:
        width = max((len(f"{c.area} {c.name}") for c in self.checks), default=10)
        lines = []
        for c in self.checks:
            lines.append(f"{MARK[c.verdict]} {f'{c.area} {c.name}':<{width}}  {c.detail}")
            if c.fix and c.verdict is not Verdict.OK:
                lines.append(f"  {'':<{width}}  fix: {c.fix}")
        failed = sum(c.verdict is Verdict.FAIL for c in self.checks)
        warned = sum(c.verdict is Verdict.WARNING for c in self.checks)
        verdict = "a night can run" if self.ok else f"{failed} problem(s) block a night"
        lines.append(f"{verdict}; {warned} warning(s); checked in {self.seconds:.1f} s")
        return "\n".join(lines) + "\n"

    def json(self) -> str:
        return json.dumps({"ok": self.ok, "seconds": round(self.seconds, 2),
                           "checks": [{**asdict(c), "verdict": c.verdict.value} for c in self.checks]}, indent=2) + "\n"


def diagnose(config: cfg.Config, *, quick: bool = False, nvml=None) -> Report:
    started = time.monotonic()
    report = Report()
    if config.executor == "ray":  # the lanes, their data and their runs are on the cluster's nodes
        report.add(*machine(config, [], None))
        report.add(*cluster(config))
        report.add(*target(config))
        report.add(Check("smoke", "run", Verdict.WARNING, "not run on a Ray cluster: the first baselines are the "
                         "smoke run", None))
        report.add(*agent(config))
        report.seconds = time.monotonic() - started
        return report
    gpus, gpu_checks = lanes(config, nvml)
    data_checks, cache = data(config, gpus)
    report.add(*machine(config, gpus, cache))
    confinement, sandbox_checks = sandbox(config)
    report.add(*sandbox_checks)
    report.add(*gpu_checks)
    report.add(*data_checks)
    target_checks = target(config)
    report.add(*target_checks)
    if quick:
        report.add(Check("smoke", "run", Verdict.WARNING, "skipped (--quick)",
                         "run doctor without --quick before a night"))
    elif gpus and all(c.verdict is not Verdict.FAIL for c in report.checks if c.area in ("data", "target")):
        report.add(*smoke(config, gpus, confinement))
    elif not gpus:
        report.add(Check("smoke", "run", Verdict.FAIL, "not run: no lane to run it on (see gpu above)",
                         "fix --gpus, then run doctor again"))
    else:
        report.add(Check("smoke", "run", Verdict.FAIL, "not run: the data or the target above is not ready",
                         "fix the lines above, then run doctor again"))
    report.add(*agent(config))
    report.seconds = time.monotonic() - started
    return report


# -- the machine ----------------------------------------------------------------------------------

def machine(config: cfg.Config, gpus: list[Gpu], cache: Path | None) -> list[Check]:
    out = [Check("machine", "python", Verdict.OK if sys.version_info >= (3, 11) else Verdict.FAIL,
                 f"Python {platform.python_version()} ({sys.executable})", "use Python 3.11 or later")]
    try:
        import torch
        cuda = torch.version.cuda
        build = f"CUDA {cuda}" if cuda else "CPU only"
        wants_gpu = any(g.index is not None for g in gpus)  # lanes on GPUs NVML found
        verdict = Verdict.FAIL if wants_gpu and not cuda else Verdict.OK
        out.append(Check("machine", "torch", verdict, f"torch {torch.__version__}, {build}",
                         "install the CUDA build of torch, or use --gpus cpu:N",
                         {"torch": torch.__version__, "cuda": cuda}))
        if cuda:
            triton = importlib.util.find_spec("triton")
            out.append(Check("machine", "triton", Verdict.OK if triton else Verdict.WARNING,
                             "importable" if triton else "missing: torch.compile and flex attention cannot run",
                             "pip install triton (it comes with the CUDA build of torch)"))
    except ImportError as e:
        out.append(Check("machine", "torch", Verdict.FAIL, f"cannot import torch ({e})", "uv sync"))
    git = shutil.which("git")
    out.append(Check("machine", "git", Verdict.OK if git else Verdict.FAIL, git or "not found",
                     "install git (the research line lives on a git branch)"))
    places = [("disk (data cache)", cache)] if cache is not None else []
    for what, where in places + [("disk (repository)", config.repo), ("disk (log)", config.db_path.parent)]:
        out.append(_disk(what, where))
    return out


def _disk(what: str, where: Path) -> Check:
    probe = Path(where).expanduser().resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 1e9
    verdict = Verdict.FAIL if free < MIN_FREE_GB else Verdict.WARNING if free < LOW_FREE_GB else Verdict.OK
    return Check("machine", what, verdict, f"{free:.1f} GB free at {probe}", f"free space on {probe}'s disk",
                 {"free_gb": round(free, 1)})


# -- the GPUs --------------------------------------------------------------------------------------

def lanes(config: cfg.Config, nvml=None) -> tuple[list[Gpu], list[Check]]:
    try:
        gpus = discover(config.gpus, nvml)
    except GpuSpecError as e:
        return [], [Check("gpu", "lanes", Verdict.FAIL, str(e), "--gpus cpu:N, or a driver that NVML can reach")]
    if all(g.index is None for g in gpus):
        return gpus, [Check("gpu", "lanes", Verdict.OK, f"{len(gpus)} CPU lane(s)")]
    driver = driver_version(nvml)
    checks = [Check("gpu", "driver", Verdict.OK, f"NVIDIA driver {driver}" if driver else "version not reported")]
    checks += [Check("gpu", f"{index}", Verdict.WARNING, f"left out: it does not answer ({why})",
                     f"nvidia-smi -q -i {index}; a card that fell off the bus needs a reset or a reboot")
               for index, why in _unusable(nvml).items()]
    for gpu, (capability, others) in zip(gpus, _card_details(gpus, nvml)):
        memory = f"{gpu.memory_total_mb / 1024:.0f} GiB" if gpu.memory_total_mb else "memory not reported"
        cc = f"compute capability {capability}" if capability else "compute capability not reported"
        figures = {"index": gpu.index, "name": gpu.name, "memory_mb": gpu.memory_total_mb, "capability": capability}
        if others is None:
            checks.append(Check("gpu", f"{gpu.index}", Verdict.OK, f"{gpu.name}, {memory}, {cc}; its processes "
                                f"are not reported", None, figures))
        elif others:
            used = ", ".join(f"pid {p} ({mb:.0f} MiB)" if mb else f"pid {p}" for p, mb in others)
            checks.append(Check("gpu", f"{gpu.index}", Verdict.WARNING, f"{gpu.name}, {memory}, {cc}; in use by "
                                f"{used}", f"stop those processes or leave GPU {gpu.index} out of --gpus", figures))
        else:
            checks.append(Check("gpu", f"{gpu.index}", Verdict.OK, f"{gpu.name}, {memory}, {cc}; idle", None, figures))
    return gpus, checks


def _unusable(nvml) -> dict[int, str]:
    """The cards NVML sees but cannot use (discovery leaves them out with a log line only)."""
    from scheduler.gpus import _NvmlUnavailable, _probe

    try:
        return _probe(nvml)[1]
    except _NvmlUnavailable:
        return {}


def _card_details(gpus: list[Gpu], nvml) -> list[tuple[str | None, list[tuple[int, float | None]] | None]]:
    """(compute capability, [(pid, MiB) of the processes on it], None when not reported) per card."""
    import pynvml

    nvml = nvml or pynvml
    out = []
    try:
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - discovery worked a moment ago; say nothing more
        return [(None, []) for _ in gpus]
    try:
        for gpu in gpus:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
            except Exception:  # noqa: BLE001
                out.append((None, []))
                continue
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                capability = f"{major}.{minor}"
            except Exception:  # noqa: BLE001
                capability = None
            try:
                procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                others = [(p.pid, (p.usedGpuMemory or 0) / 2**20 or None) for p in procs]
            except Exception:  # noqa: BLE001 - said as "not reported", never as idle
                others = None
            out.append((capability, others))
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    return out


# -- a Ray cluster ---------------------------------------------------------------------------------

def cluster(config: cfg.Config) -> list[Check]:
    """--executor ray: the cluster answers, gives the lanes asked for, and every node has the data
    its runs read (asked of the harness there; the night prepares what a node lacks)."""
    try:
        from scheduler.cluster.raycluster import ClusterError, RayCluster
    except ImportError:
        return [Check("ray", "cluster", Verdict.FAIL, "Ray is not installed", "pip install 'autoresearch-tui[ray]'")]
    try:
        ray_cluster = RayCluster(config.ray_address)
    except ClusterError as e:
        return [Check("ray", "cluster", Verdict.FAIL, str(e), "ray start --head on one node, "
                      "ray start --address HEAD:PORT on the others")]
    try:
        try:
            gpus = ray_cluster.lanes(config.gpus)
        except ClusterError as e:
            return [Check("ray", "cluster", Verdict.FAIL, str(e), "--gpus auto, or free the cluster's GPUs")]
        nodes = ray_cluster.nodes()
        out = [Check("ray", "cluster", Verdict.OK, f"{ray_cluster.address}: {len(gpus)} lane(s) on "
                                                   f"{len(nodes)} node(s)")]
        start = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=config.repo, capture_output=True,
                               text=True).stdout.strip() if Path(config.repo).is_dir() else ""
        found = {}
        if start:
            executor = ray_cluster.executor(config.target.command)
            found = {n.node_id: n for n in ray_cluster.ready(executor, Path(config.repo), start, dict(os.environ),
                                                              prepare=False)}
        for node_id, lane_numbers in nodes.items():
            info = ray_cluster.described[lane_numbers[0]]
            where = f"lane(s) {', '.join(map(str, lane_numbers))}: {info['name']}"
            data_ = found.get(node_id)
            if data_ is None:
                out.append(Check("ray", f"node {info['host']}", Verdict.OK, f"{where}; data not checked (no commit)"))
            elif data_.ready:
                out.append(Check("ray", f"node {info['host']}", Verdict.OK, f"{where}; {data_.detail}"))
            else:
                out.append(Check("ray", f"node {info['host']}", Verdict.WARNING,
                                 f"{where}; lacks the {data_.profile} data ({data_.detail}): the night runs "
                                 f"prepare.py there before its lanes start",
                                 f"{' '.join(data_.prepare_command)} on {info['host']}"))
        return out
    finally:
        ray_cluster.close()


# -- the data ----------------------------------------------------------------------------------------

def data(config: cfg.Config, gpus: list[Gpu]) -> tuple[list[Check], Path | None]:
    """The data check is the harness's own (`prepare.py --check` in the target), so it checks what
    the trainer will read; also returns the data cache's folder, for the disk check."""
    harness = Path(config.repo) / "prepare.py"
    if not harness.is_file():
        return [Check("data", "profile", Verdict.WARNING, f"no prepare.py in {config.repo}: the target's data is "
                      f"not checked here (the smoke run reads it)", "run doctor without --quick")], None
    profile = os.environ.get("AUTORESEARCH_PROFILE") or ("full" if any(g.index is not None for g in gpus) else "tiny")
    try:
        done = subprocess.run([sys.executable, str(harness), "--check", "--profile", profile], cwd=config.repo,
                              capture_output=True, text=True, timeout=300)
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return [Check("data", "profile", Verdict.WARNING, f"{harness} has no --check (an older or upstream "
                      f"harness): its data is checked only by the smoke run reading it",
                      "run doctor without --quick, so that the smoke run reads the data")], None
    checks = [Check("data", c["name"], Verdict.OK if c["ok"] else Verdict.FAIL, c["detail"], c.get("fix"))
              for c in found.get("checks", [])]
    return checks, Path(found["cache"]) if found.get("cache") else None


# -- the target ----------------------------------------------------------------------------------------

def target(config: cfg.Config) -> list[Check]:
    repo = config.repo
    git = shutil.which("git") or "git"

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run([git, *args], cwd=repo, capture_output=True, text=True)

    top = run("rev-parse", "--show-toplevel") if Path(repo).is_dir() else None
    if top is None or top.returncode != 0:
        return [Check("target", "repository", Verdict.FAIL, f"{repo} is not a git repository",
                      f"git init {repo} && git -C {repo} add -A && git -C {repo} commit -m start")]
    if run("rev-parse", "--verify", "-q", "HEAD").returncode != 0:
        return [Check("target", "repository", Verdict.FAIL, f"{repo} has no commit yet",
                      f"git -C {repo} add -A && git -C {repo} commit -m start")]
    out = [Check("target", "repository", Verdict.OK, top.stdout.strip())]
    missing = [p for p in config.target.editable if not (Path(repo) / p).is_file()]
    if missing:
        out.append(Check("target", "editable", Verdict.FAIL, f"no {', '.join(missing)} in {repo}",
                         "--editable PATH (the file the agents change), or --repo pointing at the project"))
    else:
        out.append(Check("target", "editable", Verdict.OK, ", ".join(config.target.editable)))
    if (Path(repo) / "prepare.py").is_file():
        dirty = run("status", "--porcelain", "--", "prepare.py").stdout.strip()
        out.append(Check("target", "prepare.py", Verdict.FAIL if dirty else Verdict.OK,
                         "changed since its last commit: the evaluation would not be the committed one" if dirty
                         else "as committed", f"git -C {repo} checkout -- prepare.py (or commit it)"))
    if config.tag:
        branch = f"autoresearch/{config.tag}"
        head = run("rev-parse", "--verify", "-q", branch)
        out.append(Check("target", "frontier", Verdict.OK,
                         f"{branch} at {head.stdout.strip()[:8]} (the night resumes it)" if head.returncode == 0
                         else f"{branch} does not exist yet (the night starts it from HEAD)"))
    return out


# -- the sandbox ---------------------------------------------------------------------------------------

def sandbox(config: cfg.Config) -> tuple[Sandbox | None, list[Check]]:
    """Whether training runs will be confined here; the smoke run below then runs confined too,
    so a target that needs something the sandbox hides shows up now, not at midnight."""
    extra = tuple(Path(p).expanduser() for p in config.sandbox_read)
    try:
        choice = choose(SandboxMode(config.sandbox), Path(config.repo), extra)
    except SandboxUnavailable as e:
        return None, [Check("machine", "sandbox", Verdict.FAIL, str(e), "apt install bubblewrap, or --sandbox auto")]
    if choice.active:
        return choice.sandbox, [Check("machine", "sandbox", Verdict.OK,
                                      f"{choice.summary}: runs see a read-only machine, an empty home, no network, "
                                      f"and only their own processes", None, {"active": True})]
    fix = ("drop --sandbox none" if config.sandbox == "none" else
           "apt install bubblewrap" if "not installed" in choice.summary else
           "let bubblewrap create namespaces here (unprivileged user namespaces, or an AppArmor profile for bwrap)")
    return None, [Check("machine", "sandbox", Verdict.WARNING,
                        f"off ({choice.summary}): LLM-written code would run with your rights", fix, {"active": False})]


# -- the smoke run ---------------------------------------------------------------------------------------

def smoke(config: cfg.Config, gpus: list[Gpu], confinement: Sandbox | None = None) -> list[Check]:
    from .smoke import smoke_runs

    logs = Path(config.repo) / ".autoresearch" / "logs" / "doctor"
    try:
        results = smoke_runs(Path(config.repo), config.target.command, gpus, logs, sandbox=confinement)
    except (OSError, subprocess.SubprocessError, RuntimeError, WorkspaceError) as e:
        return [Check("smoke", "run", Verdict.FAIL, f"could not start: {e}", "check --command and the repository")]
    out = []
    for r in results:
        where = f"lane {r.gpu.lane} ({r.gpu.name if r.gpu.index is None else f'GPU {r.gpu.index}'})"
        f = r.figures
        if not r.ok:
            why = r.result.error or r.result.status.value
            out.append(Check("smoke", where, Verdict.FAIL, f"{r.result.status.value}: {why} (log {r.log_path})",
                             f"read {r.log_path}; a crash here is a crash every run tonight", f))
            continue
        detail = (f"attention {f['attention'] or '?'}, startup {_s(f['startup_s'])}, {_rate(f['tok_per_s'])}, "
                  f"MFU {_pct(f['mfu_percent'])}, {f['steps']} steps, peak {_mb(f['peak_vram_mb'])}, "
                  f"val_bpb {f['val_bpb']}")
        out.append(Check("smoke", where, Verdict.OK, detail, None, f))
        seen = str(r.result.summary.get("device_name") or "")
        if r.gpu.index is not None and seen and r.gpu.name not in seen and seen not in r.gpu.name:
            # The child was pinned to NVML's card r.gpu.index with CUDA_DEVICE_ORDER=PCI_BUS_ID;
            # another name means the lanes' telemetry and their runs would be on different cards.
            out.append(Check("smoke", f"{where} card", Verdict.FAIL, f"NVML's GPU {r.gpu.index} is {r.gpu.name}, but the "
                             f"run saw {seen}", "check CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER in the environment "
                             "(a container may renumber the cards)", f))
        if r.follows_budget is False:
            out.append(Check("smoke", f"{where} budget", Verdict.WARNING,
                             f"trained {f['training_s']} s for a budget of {r.budget:g} s: the target sets its own "
                             f"budget (it does not read AUTORESEARCH_TIME_BUDGET)",
                             "make the target read AUTORESEARCH_TIME_BUDGET, or set --budget to its own budget "
                             "so timeouts fit", f))
    return out


def _s(x) -> str:
    return f"{x:.1f} s" if isinstance(x, (int, float)) else "?"


def _rate(x) -> str:
    return f"{x / 1e3:,.1f}k tok/s" if isinstance(x, (int, float)) else "? tok/s"


def _pct(x) -> str:
    return f"{x:.1f}%" if isinstance(x, (int, float)) else "n/a"


def _mb(x) -> str:
    return f"{x / 1024:.1f} GiB" if isinstance(x, (int, float)) and x else "n/a"


# -- the agent --------------------------------------------------------------------------------------------

def agent(config: cfg.Config) -> list[Check]:
    if config.agent == "offline":
        return [Check("agent", "proposer", Verdict.OK, "the offline mutator (no key, no network)")]
    if config.agent == "external":
        return [Check("agent", "proposer", Verdict.OK, "external agents through the MCP server (no key here); "
                      "`autoresearch-tui agent-files --for claude|codex` writes what starts them")]
    provider, model = config.agent.split(":", 1)
    key = VARIABLES[provider]
    try:  # the same sources, in the same order, as a night (scheduler/runs/key_sources.py)
        found = provider_key(provider, key_file=config.key_file, key_command=config.key_command,
                             environment=dict(os.environ))
    except KeySourceError as e:
        return [Check("agent", "key", Verdict.FAIL, str(e), "fix the key file or key_command (the message says how)")]
    if found is None and not (provider == "openai" and config.base_url):
        return [Check("agent", "key", Verdict.FAIL, f"no key for {provider}: no key file, key command, keyring "
                      f"entry or {key}", f"write it to a file only you may read (chmod 600) and pass --key-file, "
                      f"or `keyring set {KEYRING_SERVICE} {key}`, or (where any process of yours can read it from "
                      f"the shell's environment) export {key}=...")]
    if found is None:
        out = [Check("agent", "key", Verdict.OK, f"no {key}: a local server needs none")]
    elif found.source is KeySource.ENVIRONMENT:  # never its value; and the truth about the launcher's copy
        out = [Check("agent", "key", Verdict.OK, f"{found.said()}: the shell (and uv) that start a night keep it in "
                     f"their environment, which a run outside the sandbox can read; --key-file PATH (mode 600), "
                     f"key_command or `keyring set {KEYRING_SERVICE} {key}` keep it out of every environment")]
    else:
        out = [Check("agent", "key", Verdict.OK, f"{found.said()}: in no process environment")]
    from agents.llm import CallInfo, Client, LlmError, Message

    client = Client(provider, model, base_url=config.base_url, context_tokens=config.context_tokens,
                    max_tokens=16, retry_budget_s=4.0, request_timeout_s=30.0,
                    api_key=found.value if found is not None else None)

    async def ask():
        try:
            return await client.complete("Answer with one word.", [Message("user", "Say OK.")], [],
                                         CallInfo("doctor"))
        finally:
            if client._sdk is not None:
                await client._sdk.close()

    where = config.base_url or f"{provider}'s API"
    try:
        reply = asyncio.run(ask())
    except LlmError as e:
        out.append(Check("agent", "call", Verdict.FAIL, f"{config.agent} at {where}: {e}", _agent_fix(str(e), config)))
        return out
    window = client.window()
    out.append(Check("agent", "call", Verdict.OK, f"{config.agent} answered ({reply.input_tokens} tokens in, "
                     f"{reply.output_tokens} out)", None, {"input_tokens": reply.input_tokens}))
    out.append(Check("agent", "window", Verdict.OK, f"{window.tokens:,} tokens ({window.source})", None,
                     {"tokens": window.tokens}))
    return out


def _agent_fix(error: str, config: cfg.Config) -> str:
    provider = config.agent.split(":", 1)[0]
    if "401" in error or "403" in error or "authentication" in error.lower():
        return f"the key was refused: check {VARIABLES[provider]}"
    if "404" in error or "not found" in error.lower() or "model" in error.lower() and "400" in error:
        return "check the model name after --agent (the provider's own spelling)"
    if "Connection" in error or "connect" in error.lower():
        return f"nothing answers at {config.base_url}: start the server, or fix --base-url" if config.base_url \
            else "check the network and the provider's status page"
    return "check --agent, --base-url and the provider's key"
