"""
The fixed harness: data, tokenizer, dataloader and the metric.

Agents never edit this file (the supervisor rejects any commit that touches it), so the
number every experiment is judged by -- val_bpb from `evaluate_bpb` -- cannot be gamed by
the program being measured. The training program imports from here. A second validation
shard, the held-out one, is read only for the night's claim (see evaluate_bpb).

    uv run prepare.py                  # full profile: download climbmix shards, train the tokenizer
    uv run prepare.py --synthetic      # full profile from the offline generator (no internet)
    uv run prepare.py --tiny           # CPU-sized profile, offline, in seconds

Everything lands under $AUTORESEARCH_CACHE (default ~/.cache/autoresearch)/<profile>/.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import contextlib
import http.client
import io
import json
import math
import os
import random
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# ---------------------------------------------------------------------------------------
# Profiles: every constant the metric depends on
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    name: str
    max_seq_len: int  # tokens per row, the model's context
    time_budget: float  # seconds of training, compilation excluded
    vocab_size: int  # including special tokens
    eval_tokens: int  # validation tokens evaluate_bpb reads, always the same ones
    val_shard: int  # index of the pinned validation shard
    heldout_shard: int  # a second validation shard the judge never reads (the claim's held-out check)
    default_train_shards: int
    synthetic_docs_per_shard: int  # training shard size when the offline generator makes the data
    # The generated validation shard is larger: packed into rows it must cover eval_tokens, and
    # the generator's small world compresses to ~250 tokens a document (2x margin for the full
    # profile, whose BPE finds more merges as more training shards are generated).
    synthetic_val_docs: int
    tokenizer_max_chars: int  # how much training text the BPE sees


PROFILES = {
    # Upstream autoresearch on one H100: 2048-token context, a 5-minute budget, an 8192-token
    # vocabulary, ~21M validation tokens, climbmix with validation shard 06542 pinned.
    "full": Profile(
        name="full", max_seq_len=2048, time_budget=300, vocab_size=8192,
        eval_tokens=40 * 524288, val_shard=6542, heldout_shard=6541, default_train_shards=10,
        synthetic_docs_per_shard=40_000, synthetic_val_docs=170_000, tokenizer_max_chars=1_000_000_000,
    ),
    # Sized for a 2-core laptop CPU: a few MB of generated text, a model that learns in 30 s.
    "tiny": Profile(
        name="tiny", max_seq_len=256, time_budget=30, vocab_size=2048,
        eval_tokens=128 * 1024, val_shard=6542, heldout_shard=6541, default_train_shards=4,
        synthetic_docs_per_shard=1_500, synthetic_val_docs=1_500, tokenizer_max_chars=20_000_000,
    ),
}

BASE_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
SPECIAL_TOKENS = ["<|bos|>", "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>"]
BOS_TOKEN = SPECIAL_TOKENS[0]
# GPT-4's split pattern with digit runs capped at two, which suits a small vocabulary.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
SYNTHETIC_SEED = 1234


class HarnessError(SystemExit):
    """A problem the user fixes by running something; exits with code 2."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fail(message: str) -> HarnessError:
    """Print one clear sentence and return the exception to raise (exit code 2)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return HarnessError(message)


def get_profile(name: str | None = None, device_type: str | None = None) -> Profile:
    """The profile named, else $AUTORESEARCH_PROFILE, else `full` on CUDA and `tiny` elsewhere."""
    name = name or os.environ.get("AUTORESEARCH_PROFILE") or ("full" if device_type == "cuda" else "tiny")
    if name not in PROFILES:
        raise fail(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}.")
    return PROFILES[name]


def time_budget(profile: Profile) -> float:
    """The training budget in seconds; the supervisor may set $AUTORESEARCH_TIME_BUDGET (a
    fraction of a second is a budget too: `--budget 0.5` trains half a second)."""
    raw = os.environ.get("AUTORESEARCH_TIME_BUDGET")
    if not raw:
        return float(profile.time_budget)
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not math.isfinite(value) or value <= 0:
        raise fail(f"AUTORESEARCH_TIME_BUDGET must be a positive number of seconds, not {raw!r}.")
    return value


def step_budget() -> int | None:
    """A budget in optimizer steps instead of seconds, from $AUTORESEARCH_STEP_BUDGET (None when
    unset). A timed run's length depends on how busy the machine is; a run of fixed steps and
    seed measures the same every time, which is what the demo on a shared laptop needs."""
    raw = os.environ.get("AUTORESEARCH_STEP_BUDGET")
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise fail(f"AUTORESEARCH_STEP_BUDGET must be a whole number of steps, not {raw!r}.")
    return int(raw)


def cache_root() -> Path:
    return Path(os.environ.get("AUTORESEARCH_CACHE") or "~/.cache/autoresearch").expanduser()


def profile_dir(profile: Profile) -> Path:
    return cache_root() / profile.name


def data_dir(profile: Profile) -> Path:
    return profile_dir(profile) / "data"


def tokenizer_dir(profile: Profile) -> Path:
    return profile_dir(profile) / "tokenizer"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def prepare_command(profile: Profile) -> str:
    return "uv run prepare.py --tiny" if profile.name == "tiny" else "uv run prepare.py (or --synthetic offline)"


def read_manifest(profile: Profile) -> dict:
    """What prepare.py recorded for this profile; a clear error if it never ran."""
    path = profile_dir(profile) / "prepared.json"
    if not path.exists():
        raise fail(f"no prepared data for the {profile.name} profile in {profile_dir(profile)}: "
                   f"run `{prepare_command(profile)}` first.")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise fail(f"{path} is unreadable: run `{prepare_command(profile)}` again.") from None
    if manifest.get("profile") != asdict(profile):
        raise fail(f"the data in {profile_dir(profile)} was prepared with other {profile.name} "
                   f"settings: run `{prepare_command(profile)}` again.")
    return manifest


# ---------------------------------------------------------------------------------------
# Shard download: parallel, retried with backoff, resumable, atomic
# ---------------------------------------------------------------------------------------


def shard_is_valid(path: Path) -> bool:
    """A shard is whole when parquet can read its footer and it has a `text` column."""
    try:
        meta = pq.ParquetFile(path)
        return "text" in meta.schema_arrow.names and meta.metadata.num_rows > 0
    except (OSError, pa.ArrowException):
        return False


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def _retry_after(headers) -> float | None:
    try:
        return min(float(headers.get("Retry-After", "")), 300.0)
    except (TypeError, ValueError):
        return None  # absent, or an HTTP date: fall back to our own backoff


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    """Fetch url into part, resuming from what part already holds when the server allows it."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "autoresearch-tui"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left past what we hold: the part is complete
            return
        if e.code in (408, 425, 429) or e.code >= 500:
            raise _Retryable(f"HTTP {e.code}", _retry_after(e.headers)) from None
        raise
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        raise _Retryable(f"{type(e).__name__}: {e}") from None
    with response:
        resumed = response.status == 206
        expected = response.headers.get("Content-Length")
        mode = "ab" if resumed else "wb"
        got = 0
        with open(part, mode) as out:  # a disk error here is not retried: it would only repeat
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (http.client.HTTPException, TimeoutError, ConnectionError, OSError) as e:
                    raise _Retryable(f"connection broke after {got} bytes: {type(e).__name__}") from None
                if not chunk:
                    break
                out.write(chunk)
                got += len(chunk)
        if expected is not None and got < int(expected):
            raise _Retryable(f"truncated body: {got} of {expected} bytes")


def download_shard(index: int, dest_dir: Path, base_url: str, *, attempts: int = 6,
                   timeout: float = 30.0, backoff: float = 1.0) -> Path:
    """Download one shard to dest_dir atomically; return its path. Raises RuntimeError when all
    attempts fail, HarnessError for a shard the server does not have."""
    dest = dest_dir / shard_name(index)
    if dest.exists() and shard_is_valid(dest):
        return dest
    part = dest.with_suffix(".parquet.part")
    url = f"{base_url.rstrip('/')}/{shard_name(index)}"
    last_error = ""
    for attempt in range(attempts):
        wait = None
        try:
            _fetch_once(url, part, timeout)
            if shard_is_valid(part):
                os.replace(part, dest)
                return dest
            last_error = "the downloaded file is not a readable parquet shard"
            part.unlink(missing_ok=True)  # a bad whole file cannot be resumed
        except _Retryable as e:
            last_error, wait = str(e), e.retry_after
        except urllib.error.HTTPError as e:
            part.unlink(missing_ok=True)
            raise fail(f"{url} answered HTTP {e.code}: check --base-url and --num-shards.") from None
        except OSError as e:  # writing the shard failed: a full disk, a read-only folder
            raise fail(f"cannot write {part}: {e.strerror or e}.") from None
        if attempt + 1 < attempts:
            # The server's Retry-After when it gives one; else exponential backoff with jitter,
            # so parallel workers do not retry in lockstep.
            time.sleep(wait if wait is not None else backoff * (2 ** attempt) * (0.5 + random.random()))
    raise RuntimeError(f"{shard_name(index)}: gave up after {attempts} attempts ({last_error})")


def download_shards(indices: list[int], dest_dir: Path, base_url: str, *, workers: int = 8,
                    **kwargs) -> list[Path]:
    from tqdm import tqdm

    dest_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in indices if not (dest_dir / shard_name(i)).exists()
            or not shard_is_valid(dest_dir / shard_name(i))]
    if not todo:
        return [dest_dir / shard_name(i) for i in indices]
    failures = []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool, \
            tqdm(total=len(todo), unit="shard", desc="download", file=sys.stderr) as bar:
        futures = {pool.submit(download_shard, i, dest_dir, base_url, **kwargs): i for i in todo}
        for future in as_completed(futures):
            try:
                future.result()
            except RuntimeError as e:
                failures.append(str(e))
            bar.update(1)
    if failures:
        raise fail(f"{len(failures)} shard(s) could not be downloaded ({failures[0]}); "
                   f"run prepare.py again to resume.")
    return [dest_dir / shard_name(i) for i in indices]


# ---------------------------------------------------------------------------------------
# Offline corpus: deterministic text with structure a model can learn
# ---------------------------------------------------------------------------------------
# A small invented world (people, places, objects, facts) and several kinds of documents
# written about it. Some structure is local (grammar, agreement, arithmetic), some spans a
# document (who was introduced where, key/value pairs recalled later), and some spans the
# corpus (each place's region and each object's colour never change). A unigram model
# scores far worse than a small transformer on it, so val_bpb moves when a model learns.

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "kr",
           "st", "th", "sh", "dr", "gl", "pl", "tr", "h", "j", "w"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ea", "io"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "th", "nd", "rk", "x"]
_PROFESSIONS = ["baker", "smith", "weaver", "sailor", "miller", "scribe", "farmer", "healer",
                "potter", "hunter", "mason", "singer"]
_COLOURS = ["red", "blue", "green", "grey", "white", "black", "golden", "silver"]
_REGIONS = ["north", "south", "east", "west", "hills", "coast", "marsh", "valley"]
_VERBS = [("carry", "carried"), ("find", "found"), ("sell", "sold"), ("mend", "mended"),
          ("paint", "painted"), ("hide", "hid"), ("buy", "bought"), ("lose", "lost")]
_FEELINGS = ["glad", "tired", "proud", "worried", "calm", "angry", "curious"]


class World:
    """The fixed vocabulary and facts every document draws on (same seed, same world)."""

    def __init__(self, seed: int = SYNTHETIC_SEED):
        rng = random.Random(seed)
        words: set[str] = set()

        def coin(syllables: int) -> str:
            while True:
                w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                            for _ in range(syllables))
                if w not in words and len(w) > 2:
                    words.add(w)
                    return w

        self.people = [coin(2).capitalize() for _ in range(400)]
        self.places = [coin(rng.choice((2, 3))).capitalize() for _ in range(150)]
        self.objects = [coin(rng.choice((1, 2))) for _ in range(200)]
        self.keys = [coin(1) for _ in range(120)]
        self.region = {p: rng.choice(_REGIONS) for p in self.places}
        self.colour = {o: rng.choice(_COLOURS) for o in self.objects}
        self.neighbour = {p: rng.choice(self.places) for p in self.places}


def _story(w: World, rng: random.Random) -> str:
    cast = rng.sample(w.people, rng.randint(2, 4))
    home = {c: rng.choice(w.places) for c in cast}
    job = {c: rng.choice(_PROFESSIONS) for c in cast}
    out = []
    for c in cast:
        out.append(f"{c} is a {job[c]} from {home[c]}, a town in the {w.region[home[c]]}.")
    for _ in range(rng.randint(4, 12)):
        a, b = rng.sample(cast, 2)
        obj = rng.choice(w.objects)
        verb, past = rng.choice(_VERBS)
        kind = rng.random()
        if kind < 0.35:
            out.append(f"{a} {past} the {w.colour[obj]} {obj} and gave it to {b}.")
        elif kind < 0.6:
            out.append(f"Every day {a} and {b} {verb} the {obj} near {w.neighbour[home[a]]}.")
        elif kind < 0.8:
            out.append(f"The {job[a]} felt {rng.choice(_FEELINGS)}, so {a} went back to {home[a]}.")
        else:
            out.append(f"{b} asked {a}: \"Is the {obj} {w.colour[obj]}?\" \"Yes, the {obj} is {w.colour[obj]}.\"")
    c = rng.choice(cast)
    out.append(f"In the end {c} the {job[c]} stayed in {home[c]}.")
    return " ".join(out)


def _arithmetic(w: World, rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(5, 20)):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice("+-*")
        if op == "*":
            a, b = a % 13, b % 13
        value = a + b if op == "+" else a - b if op == "-" else a * b
        lines.append(f"{a} {op} {b} = {value}")
    return "Sums:\n" + "\n".join(lines)


def _atlas(w: World, rng: random.Random) -> str:
    out = []
    for place in rng.sample(w.places, rng.randint(3, 8)):
        out.append(f"Q: Where is {place}? A: {place} lies in the {w.region[place]}, "
                   f"next to {w.neighbour[place]}.")
    for obj in rng.sample(w.objects, rng.randint(2, 6)):
        out.append(f"Q: What colour is a {obj}? A: A {obj} is always {w.colour[obj]}.")
    return "\n".join(out)


def _ledger(w: World, rng: random.Random) -> str:
    keys = rng.sample(w.keys, rng.randint(4, 10))
    values = {k: rng.randint(0, 999) for k in keys}
    out = ["Ledger."] + [f"{k} = {values[k]};" for k in keys]
    for k in rng.sample(keys, min(len(keys), rng.randint(2, 5))):
        out.append(f"Recall {k}: {values[k]}.")
    return " ".join(out)


def _sequence(w: World, rng: random.Random) -> str:
    start, step = rng.randint(0, 50), rng.randint(1, 9)
    count = rng.randint(6, 20)
    items = [str(start + i * step) for i in range(count)]
    nums = sorted(rng.sample(range(100), rng.randint(4, 12)))
    return (f"Count by {step} from {start}: " + ", ".join(items) + ".\n"
            f"In order: " + " ".join(map(str, nums)) + f". Largest: {nums[-1]}.")


_DOC_KINDS = [(_story, 0.45), (_atlas, 0.15), (_ledger, 0.15), (_arithmetic, 0.15), (_sequence, 0.10)]


def synthetic_documents(seed: int, count: int, world: World | None = None) -> list[str]:
    """`count` documents, the same ones for the same seed on any machine."""
    world = world or World()
    rng = random.Random(seed)
    makers, weights = zip(*_DOC_KINDS)
    docs = []
    for _ in range(count):
        parts = [rng.choices(makers, weights)[0](world, rng) for _ in range(rng.randint(1, 3))]
        docs.append("\n\n".join(parts))
    return docs


def _write_synthetic_shard(args: tuple[int, int, Path]) -> Path:
    index, docs_per_shard, dest_dir = args
    path = dest_dir / shard_name(index)
    # The same seed and count make the same shard, so a whole one is kept; a shard of another
    # size (an older profile) is made again.
    if path.exists() and shard_is_valid(path) and pq.ParquetFile(path).metadata.num_rows == docs_per_shard:
        return path
    # Distinct seeds per shard, so shards can be written in parallel and in any order.
    docs = synthetic_documents(SYNTHETIC_SEED * 100_003 + index, docs_per_shard)
    tmp = path.with_suffix(f".parquet.tmp{os.getpid()}")
    pq.write_table(pa.table({"text": docs}), tmp, row_group_size=1024)
    os.replace(tmp, path)
    return path


def generate_shards(indices: list[int], dest_dir: Path, docs_per_shard: int, workers: int,
                    sizes: dict[int, int] | None = None) -> None:
    """Shards `indices`, each of `docs_per_shard` documents unless `sizes` names its own count."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    dest_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(i, (sizes or {}).get(i, docs_per_shard), dest_dir) for i in indices]
    with tqdm(total=len(jobs), unit="shard", desc="generate", file=sys.stderr) as bar:
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                _write_synthetic_shard(job)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                for _ in pool.map(_write_synthetic_shard, jobs):
                    bar.update(1)


# ---------------------------------------------------------------------------------------
# Tokenizer: BPE trained with rustbpe, used through tiktoken
# ---------------------------------------------------------------------------------------


def list_shards(profile: Profile, split: str) -> list[Path]:
    manifest = read_manifest(profile)
    if split == "val":
        names = [shard_name(profile.val_shard)]
    elif split == "heldout":
        names = [shard_name(profile.heldout_shard)]
    elif split == "train":
        names = [shard_name(i) for i in manifest["train_shards"]]
    else:
        raise ValueError(f"split must be 'train', 'val' or 'heldout', not {split!r}")
    paths = [data_dir(profile) / n for n in names]
    for p in paths:
        if not p.exists():
            raise fail(f"shard {p} is missing: run `{prepare_command(profile)}` again.")
    return paths


def iter_texts(paths: list[Path], profile: Profile) -> Iterator[list[str]]:
    """Batches of document texts, one parquet row group at a time."""
    for path in paths:
        try:
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                yield pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
        except (OSError, pa.ArrowException):
            raise fail(f"shard {path} is corrupt or truncated: delete it and run "
                       f"`{prepare_command(profile)}` again.") from None


def train_tokenizer(profile: Profile, train_paths: list[Path]) -> None:
    import rustbpe

    out = tokenizer_dir(profile)
    out.mkdir(parents=True, exist_ok=True)

    def texts() -> Iterator[str]:
        budget = profile.tokenizer_max_chars
        for batch in iter_texts(train_paths, profile):
            for text in batch:
                text = text[:10_000]  # long documents add little but repetition
                budget -= len(text)
                yield text
                if budget <= 0:
                    return

    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(texts(), profile.vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
    _save_tokenizer(out, ranks, bpe.get_pattern())


def _save_tokenizer(out: Path, ranks: dict[bytes, int], pattern: str) -> None:
    import base64

    # tiktoken's own file format: one "base64(token) rank" line per mergeable token.
    lines = [f"{base64.b64encode(tok).decode()} {rank}" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    _atomic_write(out / "tokenizer.tiktoken", "\n".join(lines) + "\n")
    specials = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    _atomic_write(out / "tokenizer.json", json.dumps({"pattern": pattern, "special_tokens": specials}))
    # Bytes per token for the metric; special tokens are 0 and so excluded from bits per byte.
    token_bytes = np.zeros(len(ranks) + len(SPECIAL_TOKENS), dtype=np.int32)
    for tok, rank in ranks.items():
        token_bytes[rank] = len(tok)
    tmp = out / "token_bytes.tmp.npy"
    np.save(tmp, token_bytes)
    os.replace(tmp, out / "token_bytes.npy")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Tokenizer:
    """The trained BPE, encoded and decoded by tiktoken."""

    def __init__(self, encoding, token_bytes: np.ndarray):
        self.enc = encoding
        self.token_bytes = token_bytes
        self.bos_token_id = encoding.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_directory(cls, profile: Profile) -> "Tokenizer":
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        d = tokenizer_dir(profile)
        needed = [d / "tokenizer.tiktoken", d / "tokenizer.json", d / "token_bytes.npy"]
        if not all(p.exists() for p in needed):
            raise fail(f"no tokenizer for the {profile.name} profile in {d}: "
                       f"run `{prepare_command(profile)}` first.")
        meta = json.loads((d / "tokenizer.json").read_text())
        encoding = tiktoken.Encoding(
            name=f"autoresearch-{profile.name}", pat_str=meta["pattern"],
            mergeable_ranks=load_tiktoken_bpe(str(d / "tokenizer.tiktoken")),
            special_tokens=meta["special_tokens"],
        )
        return cls(encoding, np.load(d / "token_bytes.npy"))

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode(self, texts: list[str], prepend_bos: bool = True, num_threads: int = 4) -> list[list[int]]:
        rows = self.enc.encode_ordinary_batch(texts, num_threads=num_threads)
        if prepend_bos:
            rows = [[self.bos_token_id] + r for r in rows]
        return rows

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)


# ---------------------------------------------------------------------------------------
# Dataloader: BOS-aligned rows, best-fit packing, no padding
# ---------------------------------------------------------------------------------------


def pack_rows(docs: Iterator[list[int]], row_len: int, buffer_size: int = 1000) -> Iterator[np.ndarray]:
    """Rows of exactly row_len tokens. Each row starts at a document's start (its BOS) and is
    filled best-fit: the longest buffered document that fits the space left goes in next; when
    none fits, the shortest one is cropped to fill the row. Nothing is padded."""
    lengths: list[int] = []  # kept sorted, parallel to `pool`
    pool: list[list[int]] = []
    docs = iter(docs)
    exhausted = False
    while True:
        while not exhausted and len(pool) < buffer_size:
            try:
                doc = next(docs)
            except StopIteration:
                exhausted = True
                break
            if doc:
                i = bisect.bisect_left(lengths, len(doc))
                lengths.insert(i, len(doc))
                pool.insert(i, doc)
        if not pool:
            return
        row = np.empty(row_len, dtype=np.int64)
        filled = 0
        while filled < row_len:
            if not pool:
                return  # the source ran dry mid-row: drop the partial row rather than pad it
            space = row_len - filled
            i = bisect.bisect_right(lengths, space) - 1
            if i < 0:
                i = 0  # nothing fits: crop the shortest document
            doc = pool.pop(i)
            lengths.pop(i)
            take = min(len(doc), space)
            row[filled:filled + take] = doc[:take]
            filled += take
        yield row


def make_dataloader(tokenizer: Tokenizer, batch_size: int, seq_len: int, split: str,
                    profile: Profile, device: str = "cpu", buffer_size: int = 1000):
    """Yields (x, y, epoch): x and y are (batch_size, seq_len) int64 tensors on `device`, y is x
    shifted by one. The train split cycles over its shards forever (epoch counts the passes);
    the val split reads the validation shard once, always in the same order."""
    import torch

    paths = list_shards(profile, split)
    if split == "train":
        # The training loader is made before the first step: a validation shard too small for
        # the metric is said now, not after the whole budget is spent.
        short = validation_shortfall(profile, read_manifest(profile))
        if short:
            raise fail(short)
    epoch_box = [1]

    def documents() -> Iterator[list[int]]:
        while True:
            for texts in iter_texts(paths, profile):
                yield from tokenizer.encode(texts)
            if split != "train":
                return
            epoch_box[0] += 1

    rows = pack_rows(documents(), seq_len + 1, buffer_size)
    on_cuda = str(device).startswith("cuda")
    # Pinned host memory lets the copy to the GPU overlap with compute (non_blocking).
    host = torch.empty((batch_size, seq_len + 1), dtype=torch.long, pin_memory=on_cuda)
    host_np = host.numpy()
    while True:
        for b in range(batch_size):
            row = next(rows, None)
            if row is None:
                return
            host_np[b] = row
        batch = host.to(device, non_blocking=True) if on_cuda else host.clone()
        yield batch[:, :-1], batch[:, 1:], epoch_box[0]


# ---------------------------------------------------------------------------------------
# The metric: bits per byte on the fixed validation tokens
# ---------------------------------------------------------------------------------------


def evaluate_bpb(model, tokenizer: Tokenizer, batch_size: int, profile: Profile, device: str = "cpu") -> float:
    """Bits per byte of the validation text under `model`.

    Summed cross-entropy (nats) over every predicted token, divided by ln 2 and by the UTF-8
    bytes those tokens stand for. Targets that are special tokens (0 bytes) are left out of
    both sums, so the figure does not depend on the vocabulary size or document boundaries.
    `model(x, y, reduction='none')` must return the per-token loss.

    The held-out check: when the supervisor sets AUTORESEARCH_HELDOUT=1 (only for the runs of
    the night's claim), the same measure on the held-out shard, which no keep was judged by, is
    printed as `heldout_val_bpb` after the summary, when the process exits. A night whose gains
    exist only on the validation shard shows there. A harness without a held-out shard (an
    upstream-layout target's own prepare.py, or data prepared before it existed) prints nothing,
    and the claim simply has no held-out figure."""
    value = bits_per_byte(model, tokenizer, batch_size, profile, "val", device)
    if os.environ.get("AUTORESEARCH_HELDOUT") == "1":
        _report_heldout(model, tokenizer, batch_size, profile, device)
    return value


def _report_heldout(model, tokenizer: Tokenizer, batch_size: int, profile: Profile, device: str) -> None:
    if not shard_is_valid(data_dir(profile) / shard_name(profile.heldout_shard)):
        print("no held-out shard prepared: the claim has no held-out figure", file=sys.stderr)
        return
    try:
        heldout = bits_per_byte(model, tokenizer, batch_size, profile, "heldout", device)
    except HarnessError as e:  # too few tokens: said, and the run's own figure stands
        print(f"held-out check skipped: {e}", file=sys.stderr)
        return
    # After the summary the trainer prints: every `key: value` line after `---` is the summary's.
    atexit.register(print, f"heldout_val_bpb:    {heldout:.6f}", flush=True)


def bits_per_byte(model, tokenizer: Tokenizer, batch_size: int, profile: Profile, split: str,
                  device: str = "cpu") -> float:
    """evaluate_bpb's measure on a split: "val" (what the judge reads) or "heldout"."""
    import torch

    seq_len = profile.max_seq_len
    steps = profile.eval_tokens // (batch_size * seq_len)
    if steps < 1:
        raise ValueError(f"eval_tokens {profile.eval_tokens} is less than one batch of {batch_size}x{seq_len}")
    token_bytes = torch.as_tensor(tokenizer.token_bytes, device=device)
    loader = make_dataloader(tokenizer, batch_size, seq_len, split, profile, device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for _ in range(steps):
            batch = next(loader, None)
            if batch is None:
                raise fail(f"the {'validation' if split == 'val' else 'held-out'} shard holds fewer than "
                           f"{profile.eval_tokens} tokens: "
                           f"run `{prepare_command(profile)}` again.")
            x, y, _ = batch
            loss = model(x, y, reduction="none").reshape(-1).double()
            b = token_bytes[y.reshape(-1)]
            counted = b > 0
            nats += loss[counted].sum()
            nbytes += b.sum()
    return (nats / (math.log(2) * nbytes)).item()


def validation_tokens(profile: Profile) -> int:
    """How many tokens evaluate_bpb can read from the validation shard: whole packed rows, as its
    loader makes them. Counted once by prepare and kept in the manifest."""
    tokenizer = Tokenizer.from_directory(profile)
    shard = data_dir(profile) / shard_name(profile.val_shard)
    docs = (doc for texts in iter_texts([shard], profile) for doc in tokenizer.encode(texts))
    return sum(1 for _ in pack_rows(docs, profile.max_seq_len + 1)) * profile.max_seq_len


def validation_shortfall(profile: Profile, manifest: dict) -> str | None:
    """Why the prepared validation data cannot give evaluate_bpb its eval_tokens, or None. Asked
    before training starts, so a run never trains for its whole budget only to fail at the end."""
    held = manifest.get("val_tokens")
    if held is None:
        return f"the validation shard was never counted: run `{prepare_command(profile)}` again."
    if held < profile.eval_tokens:
        return (f"the validation shard holds {held:,} usable tokens, fewer than the {profile.eval_tokens:,} "
                f"evaluate_bpb reads: run `{prepare_command(profile)}` again.")
    return None


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------


def prepare(profile: Profile, *, synthetic: bool, num_shards: int, base_url: str, workers: int) -> Path:
    train = list(range(num_shards))
    dest = data_dir(profile)
    evaluated = [profile.val_shard, profile.heldout_shard]
    if synthetic:
        generate_shards(train + evaluated, dest, profile.synthetic_docs_per_shard, workers,
                        sizes={i: profile.synthetic_val_docs for i in evaluated})
    else:
        download_shards(train + evaluated, dest, base_url, workers=workers)
    manifest_path = profile_dir(profile) / "prepared.json"
    tok = tokenizer_dir(profile)
    if not (tok / "token_bytes.npy").exists():
        print(f"training a {profile.vocab_size}-token BPE ...", file=sys.stderr, flush=True)
        t0 = time.time()
        train_tokenizer(profile, [dest / shard_name(i) for i in train])
        print(f"tokenizer trained in {time.time() - t0:.1f}s", file=sys.stderr)
    manifest = {
        "profile": asdict(profile), "source": "synthetic" if synthetic else base_url,
        "train_shards": train, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "val_tokens": validation_tokens(profile),
    }
    _atomic_write(manifest_path, json.dumps(manifest, indent=2))
    return profile_dir(profile)


def check(profile: Profile) -> dict:
    """Whether the profile's data is ready, without changing anything (`autoresearch-tui doctor`
    asks through `prepare.py --check`): the manifest, every shard readable, the tokenizer."""
    out = {"profile": profile.name, "dir": str(profile_dir(profile)), "cache": str(cache_root()), "checks": []}

    def said(name: str, ok: bool, detail: str) -> None:
        out["checks"].append({"name": name, "ok": ok, "detail": detail,
                              "fix": None if ok else f"uv run {prepare_command(profile).removeprefix('uv run ')}"})

    with contextlib.redirect_stderr(io.StringIO()):  # fail() prints; here its sentence is the detail
        try:
            manifest = read_manifest(profile)
            said("profile", True, f"{profile.name} in {profile_dir(profile)}")
            shards = list_shards(profile, "train") + list_shards(profile, "val")
        except HarnessError as e:
            said("profile" if not out["checks"] else "shards", False, str(e))
            return out
    bad = [p.name for p in shards if not shard_is_valid(p)]
    said("shards", not bad, f"{len(shards)} shard(s) readable" if not bad else
         f"unreadable shard(s): {', '.join(bad[:3])}")
    try:
        tokenizer = Tokenizer.from_directory(profile)
        said("tokenizer", True, f"{tokenizer.get_vocab_size():,} tokens")
    except (HarnessError, OSError, ValueError) as e:
        said("tokenizer", False, f"cannot be loaded ({e})")
    short = validation_shortfall(profile, manifest)
    said("validation", short is None, short or f"{manifest['val_tokens']:,} tokens for the {profile.eval_tokens:,} read")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prepare.py", description="Prepare data and tokenizer for a profile.")
    parser.add_argument("--tiny", action="store_true", help="the CPU-sized profile (generated data, offline)")
    parser.add_argument("--profile", help="profile name: " + ", ".join(PROFILES))
    parser.add_argument("--synthetic", action="store_true", help="generate the corpus offline instead of downloading")
    parser.add_argument("--num-shards", type=int, help="training shards (default: the profile's)")
    parser.add_argument("--base-url", default=os.environ.get("AUTORESEARCH_DATA_URL", BASE_URL),
                        help="where shards are downloaded from ($AUTORESEARCH_DATA_URL)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--check", action="store_true",
                        help="change nothing: print whether the profile's data is ready, as JSON (exit 1 if not)")
    args = parser.parse_args(argv)
    if args.check:
        found = check(get_profile("tiny" if args.tiny else args.profile))
        print(json.dumps(found))
        return 0 if all(c["ok"] for c in found["checks"]) else 1

    if args.tiny and args.profile not in (None, "tiny"):
        raise fail("--tiny and --profile disagree: give one of them.")
    profile = get_profile("tiny" if args.tiny else (args.profile or "full"))
    num_shards = args.num_shards if args.num_shards is not None else profile.default_train_shards
    if not 1 <= num_shards < min(profile.val_shard, profile.heldout_shard):  # neither is ever trained on
        raise fail(f"--num-shards must be between 1 and {min(profile.val_shard, profile.heldout_shard) - 1}, "
                   f"not {num_shards}.")
    synthetic = args.synthetic or profile.name == "tiny"
    t0 = time.time()
    where = prepare(profile, synthetic=synthetic, num_shards=num_shards,
                    base_url=args.base_url, workers=args.workers)
    print(f"{profile.name} profile ready in {where} ({time.time() - t0:.1f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
