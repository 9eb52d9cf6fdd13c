"""The supervisor's configuration: an optional TOML file, then command-line flags on top.

Example `autoresearch.toml` (every key optional):

    tag = "nov20"
    gpus = "auto"             # auto | 0,2,3 | cpu:N
    agent = "offline"         # offline | anthropic:MODEL | openai:MODEL | external
    base_url = "http://127.0.0.1:8080/v1"   # a proxy or a local OpenAI-compatible server
    context_tokens = 8192     # the model's window (default: asked of the server)
    max_cost = 20.0           # US dollars of LLM calls this session may spend
    key_file = "~/.config/autoresearch/openai.key"   # the provider key, mode 600 (or key_command = "pass show openai")
    budget = 300              # training seconds per experiment
    max_experiments = 100
    plateau = 30              # warn after this many judged experiments without a keep, end after twice; 0: off
    confirm = true            # measure the claim at the end: the frontier against the start, side by side
    confirm_runs = 4          # runs of each (default: as many as the measured noise asks, at most confirm_max = 8)
    notify = ["https://ntfy.sh/my-lab", "slack:https://hooks.slack.com/services/..."]
    review = false
    noise_floor = 0.001       # the least val_bpb improvement ever kept
    baseline_runs = 8         # runs of the starting point per GPU model (default: 2 per lane, at least 4)
    keep_rule = "noise"       # noise | greedy (upstream's rule, for comparison)
    hung_seconds = 600
    [target]                  # what the lanes edit and run
    editable = ["train.py"]
    command = "python train.py"
    metric = "val_bpb"
    direction = "lower"       # lower | higher
    constraints = { peak_vram_mb = 60000, num_params_M = 100 }   # ceilings on summary keys
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import date
from pathlib import Path

from results.constraints import Constraint
from results.metric import Direction, Metric


TIMEOUT_SLACK_S = 120.0  # added to twice a run's expected length: a compile, a slow disk


class ConfigError(Exception):
    """A bad flag, file or value; one sentence for the user (exit code 2)."""


@dataclass(frozen=True)
class Target:
    editable: tuple[str, ...] = ("trainer/train.py",)
    command: str = "python -m trainer.train"
    metric: str = "val_bpb"
    direction: str = "lower"  # lower | higher
    constraints: tuple[Constraint, ...] = ()  # ceilings a run must respect, or it is discarded


@dataclass(frozen=True)
class Config:
    repo: Path = Path(".")
    tag: str = ""
    gpus: str = "auto"
    agent: str = "offline"
    base_url: str | None = None
    context_tokens: int | None = None  # the LLM's context window; None: ask the server, else a default
    # Where the provider key comes from instead of the environment (scheduler/runs/key_sources.py):
    # a file only its owner may read, or a command run once at start.
    key_file: Path | None = None
    key_command: str | None = None
    max_cost: float | None = None  # US dollars this session may spend on LLM calls; None: no limit
    budget: float | None = None  # None: the trainer's own (300 s for the full profile)
    max_experiments: int | None = None
    # Judged experiments without a keep before the plateau warning; the night ends at twice this
    # (scheduler/engine/plateau.py); 0: off. A line still finding something keeps one change in
    # five to ten: thirty misses in a row befall a line keeping one in ten by bad luck 4% of the
    # time (0.9**30), sixty 0.2%. On one GPU with 5-minute runs thirty are two and a half hours.
    plateau: int = 30
    notify: tuple[str, ...] = ()  # where a keep, a plateau, a lost lane, a limit, the end are POSTed
    # The claim at the night's end (scheduler/engine/confirmation.py): the frontier and the start
    # run side by side, confirm_runs each (None: as many as the measured noise asks, at most
    # confirm_max). confirm_only: a session that measures the claim and nothing else.
    confirm: bool = True
    confirm_runs: int | None = None
    confirm_max: int = 8
    confirm_only: bool = False
    db: Path | None = None  # default <repo>/.autoresearch/results.duckdb
    review: bool = False
    resume: bool = False
    noise_floor: float = 0.001
    baseline_runs: int | None = None  # the starting point's runs per GPU model; None: 2 per lane, at least 4
    keep_rule: str = "noise"  # noise (ours) | greedy (upstream's: any measured improvement, for comparison)
    hung_seconds: float = 600.0  # a first torch.compile can be silent for minutes
    timeout_seconds: float | None = None  # default: twice the budget plus 2 minutes (upstream: 10 min for 5)
    kill_grace_seconds: float = 10.0
    no_ui: bool = False
    demo: bool = False
    seed: int = 0
    sandbox: str = "auto"  # auto | bwrap | none: how training children are confined (scheduler/runs/sandbox.py)
    sandbox_read: tuple[str, ...] = ()  # more paths a sandboxed run may read (say a data folder in the home)
    mcp: bool = False  # host the MCP server for external agents (implied by --agent external or --mcp-port)
    mcp_port: int | None = None  # None: a free port
    mcp_host: str = "127.0.0.1"
    executor: str = "local"  # local | ray: where runs happen (scheduler/cluster/raycluster.py for ray)
    ray_address: str = "auto"  # the Ray cluster to join: auto (RAY_ADDRESS, or the one this machine is in) or HOST:PORT
    ray_lost_after: float = 60.0  # seconds the cluster's head may not answer before the night ends
    claim_seconds: float = 1800.0  # an external agent's claim on a lane lapses after this long without a submission
    target: Target = field(default_factory=Target)

    @property
    def db_path(self) -> Path:
        return self.db if self.db is not None else self.repo / ".autoresearch" / "results.duckdb"

    @property
    def metric(self) -> Metric:
        return Metric(self.target.metric, Direction(self.target.direction))

    @property
    def serves_agents(self) -> bool:
        """Whether the MCP server for external agents runs this session."""
        return self.mcp or self.mcp_port is not None or self.agent == "external"

    @property
    def run_budget(self) -> float:
        return self.budget if self.budget is not None else 300.0

    @property
    def run_timeout(self) -> float:
        return self.timeout_seconds if self.timeout_seconds is not None else 2 * self.run_budget + TIMEOUT_SLACK_S

    def timeout_after(self, run_seconds: float | None) -> float:
        """A run's timeout once the starting point has run: twice what it took, plus two
        minutes, rather than what the budget assumed (a target that sets its own budget, as
        upstream-layout forks do, runs 30 s where 300 were assumed). --timeout always wins."""
        if self.timeout_seconds is not None or run_seconds is None:
            return self.run_timeout
        return 2 * run_seconds + TIMEOUT_SLACK_S


def default_tag(today: date | None = None) -> str:
    today = today or date.today()
    return today.strftime("%b%d").lower()  # upstream's style: "mar5" -> "mar05"


_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOP_KEYS = {f.name for f in fields(Config)} - {"target", "no_ui", "demo", "resume", "repo", "confirm_only"}
_TARGET_KEYS = {f.name for f in fields(Target)}


def load_file(path: Path) -> dict:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"the config file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}.") from None
    unknown = set(data) - _TOP_KEYS - {"target", "ray"}
    if unknown:
        raise ConfigError(f"{path}: unknown setting {sorted(unknown)[0]!r} (known: {', '.join(sorted(_TOP_KEYS))}, [target]).")
    cluster = data.pop("ray", {})
    if not isinstance(cluster, dict) or set(cluster) - {"address", "lost_after"}:
        raise ConfigError(f"{path}: [ray] takes address (the cluster to join: auto or HOST:PORT) and lost_after "
                          f"(seconds without an answer from its head before the night ends).")
    if "address" in cluster:
        data["ray_address"] = cluster["address"]
    if "lost_after" in cluster:
        data["ray_lost_after"] = cluster["lost_after"]
    target = data.get("target", {})
    if not isinstance(target, dict):
        raise ConfigError(f"{path}: target must be a table ([target]).")
    unknown = set(target) - _TARGET_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown [target] setting {sorted(unknown)[0]!r} (known: {', '.join(sorted(_TARGET_KEYS))}).")
    return data


def build(file_values: dict, flags: dict) -> Config:
    """Flags (those given, not None) override the file, which overrides the defaults."""
    values = {k: v for k, v in file_values.items() if k != "target"}
    values.update({k: v for k, v in flags.items() if v is not None and k != "target"})
    target_values = dict(file_values.get("target", {}))
    target_values.update({k: v for k, v in flags.get("target", {}).items() if v is not None})
    if "editable" in target_values:
        editable = target_values["editable"]
        if isinstance(editable, str) or not all(isinstance(p, str) for p in editable) or not editable:
            raise ConfigError("target.editable must be a non-empty list of file paths.")
        target_values["editable"] = tuple(editable)
    limits = file_values.get("target", {}).get("constraints", {})
    if not isinstance(limits, dict):
        raise ConfigError("target.constraints must be a table of summary keys and their ceilings "
                          "({ peak_vram_mb = 60000 }, say).")
    limits = {**limits, **(flags.get("target", {}).get("constraints") or {})}
    try:
        target_values["constraints"] = tuple(Constraint(key, value) for key, value in limits.items())
    except ValueError as e:
        raise ConfigError(f"target.constraints: {e}.") from None
    try:
        target = Target(**target_values)
        config = Config(**values, target=target)
    except TypeError as e:
        raise ConfigError(f"bad configuration: {e}.") from None
    return validate(config)


def validate(config: Config) -> Config:
    def positive(name, value, allow_none=True):
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{name} must be a positive number, not {value!r}.")

    positive("budget", config.budget)
    positive("max_cost", config.max_cost)
    if config.context_tokens is not None and (isinstance(config.context_tokens, bool) or
                                              not isinstance(config.context_tokens, int) or config.context_tokens < 1024):
        raise ConfigError(f"context_tokens must be a whole number of at least 1024, not {config.context_tokens!r}.")
    positive("max_experiments", config.max_experiments)
    if config.key_command is not None and (not isinstance(config.key_command, str) or not config.key_command.strip()):
        raise ConfigError("key_command must be a command line that prints the key, e.g. \"pass show openai\".")
    if config.key_file is not None and not isinstance(config.key_file, Path):
        if not isinstance(config.key_file, str) or not config.key_file:
            raise ConfigError("key_file must be the path of a file that holds the key.")
        config = replace(config, key_file=Path(config.key_file))
    if not isinstance(config.confirm, bool):
        raise ConfigError(f"confirm must be true or false, not {config.confirm!r}.")
    for name, least in (("confirm_runs", 2), ("confirm_max", 2)):
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ConfigError(f"{name} must be a whole number of runs, at least {least} (a spread needs two), "
                              f"not {value!r}.")
    if isinstance(config.plateau, bool) or not isinstance(config.plateau, int) or config.plateau < 0:
        raise ConfigError(f"plateau must be a whole number of experiments (0 to turn it off), not {config.plateau!r}.")
    positive("hung_seconds", config.hung_seconds, False)
    positive("timeout_seconds", config.timeout_seconds)
    positive("kill_grace_seconds", config.kill_grace_seconds, False)
    if config.baseline_runs is not None and (isinstance(config.baseline_runs, bool)
                                             or not isinstance(config.baseline_runs, int) or config.baseline_runs < 1):
        raise ConfigError(f"baseline_runs must be a whole number of at least 1, not {config.baseline_runs!r}.")
    if not isinstance(config.noise_floor, (int, float)) or config.noise_floor < 0:
        raise ConfigError(f"noise_floor must be a number of at least 0, not {config.noise_floor!r}.")
    if config.sandbox not in ("auto", "bwrap", "none"):
        raise ConfigError(f"sandbox must be auto, bwrap or none, not {config.sandbox!r}.")
    if isinstance(config.sandbox_read, str) or not all(isinstance(p, str) and p for p in config.sandbox_read):
        raise ConfigError("sandbox_read must be a list of paths.")
    for path in config.sandbox_read:
        if not Path(path).expanduser().exists():
            raise ConfigError(f"sandbox_read: {path} does not exist.")
    if config.keep_rule not in ("noise", "greedy"):
        raise ConfigError(f"keep_rule must be noise or greedy, not {config.keep_rule!r}.")
    if config.target.direction not in ("lower", "higher"):
        raise ConfigError(f"target.direction must be lower or higher, not {config.target.direction!r}.")
    try:
        Metric(config.target.metric)
    except ValueError:
        raise ConfigError(f"target.metric must be a key the trainer prints in its summary, "
                          f"not {config.target.metric!r}.") from None
    if not config.target.command.strip():
        raise ConfigError("target.command is empty.")
    for path in config.target.editable:
        if Path(path).is_absolute() or ".." in Path(path).parts:
            raise ConfigError(f"editable file {path} must be a path inside the repository.")
    if config.tag and not _TAG.match(config.tag):
        raise ConfigError(f"--tag {config.tag!r} must be letters, digits, '.', '_' or '-' (a git branch name part).")
    if not (config.agent in ("offline", "external") or re.match(r"^(anthropic|openai):\S+$", config.agent)):
        raise ConfigError(f"--agent must be offline, external, anthropic:MODEL or openai:MODEL, not {config.agent!r}.")
    if config.mcp_port is not None and (isinstance(config.mcp_port, bool) or not isinstance(config.mcp_port, int)
                                        or not 1 <= config.mcp_port <= 65535):
        raise ConfigError(f"mcp_port must be a port number (1-65535), not {config.mcp_port!r}.")
    positive("claim_seconds", config.claim_seconds, False)
    positive("ray_lost_after", config.ray_lost_after, False)
    if config.executor not in ("local", "ray"):
        raise ConfigError(f"executor must be local or ray, not {config.executor!r}.")
    if not isinstance(config.mcp_host, str) or not config.mcp_host:
        raise ConfigError(f"mcp_host must be a host name or address, not {config.mcp_host!r}.")
    if config.max_experiments is not None:
        config = replace(config, max_experiments=int(config.max_experiments))
    if isinstance(config.notify, str) or not all(isinstance(url, str) and url for url in config.notify):
        raise ConfigError("notify must be a list of URLs.")
    return replace(config, sandbox_read=tuple(config.sandbox_read), notify=tuple(config.notify))
