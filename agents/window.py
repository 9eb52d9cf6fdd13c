"""How many tokens a model's context holds, and how many a prompt will take.

Local models run with small windows (4-32k tokens is common under Ollama, vLLM and llama.cpp),
and a prompt that does not fit is refused outright (llama.cpp, vLLM, the hosted APIs) or cut
silently from the front (Ollama). So the window is learnt before the first call:

1. `--context-tokens N` (or `context_tokens` in the TOML file), when given: a person's word;
2. the server, where it says: vLLM's `/v1/models` (`max_model_len`), llama.cpp's `/props`
   (the slot's `n_ctx`) or `/v1/models` (`meta.n_ctx`), Ollama's `/api/show` (`num_ctx`, else
   its default of 4096);
3. a default per provider: the hosted APIs' smallest current windows, and 8192 for an
   OpenAI-compatible server that does not say.

When both 1 and 2 are known the smaller wins. A server that refuses a prompt as too long
usually says both numbers; `exceeded()` reads them, so the next brief is cut to the truth.

Tokens are estimated from characters (no tokenizer for every model exists here); the ratio
starts cautious and is corrected from what the server reports it counted."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass

log = logging.getLogger("autoresearch.agents")

PROBE_TIMEOUT_S = 3.0
DEFAULT_WINDOW = {"anthropic": 200_000, "openai": 128_000}
LOCAL_DEFAULT_WINDOW = 8192  # an OpenAI-compatible server that does not say (and Ollama's older default)
OLLAMA_DEFAULT_CTX = 4096  # what Ollama runs a model with unless num_ctx is set
# Characters per token. Code and English run 3.5-4.5 with current tokenizers; a small
# model's tokenizer can be coarser, so start below and learn from the server's counts.
START_CHARS_PER_TOKEN = 3.0
MIN_CHARS_PER_TOKEN = 2.0


@dataclass(frozen=True)
class Window:
    tokens: int
    source: str  # where the number came from, for the log


def discover(provider: str, model: str, base_url: str | None, configured: int | None,
             api_key: str | None = None) -> Window:
    """The model's context window, from the setting, the server, or the provider's default.
    `api_key`: the key for that server (else $OPENAI_API_KEY), sent to it alone."""
    # Only an OpenAI-compatible server is asked (Anthropic's API does not say), and only the
    # one the user named, with the key meant for it.
    served = _ask_server(model, base_url, _headers(api_key)) if base_url and provider == "openai" else None
    if configured is not None and served is not None:
        if served.tokens < configured:
            log.warning("--context-tokens %d is more than the server's window (%d, %s): using %d", configured,
                        served.tokens, served.source, served.tokens)
            return served
        return Window(configured, "--context-tokens")
    if configured is not None:
        return Window(configured, "--context-tokens")
    if served is not None:
        return served
    if base_url and provider == "openai":
        return Window(LOCAL_DEFAULT_WINDOW, "a cautious default: the server did not say (set --context-tokens)")
    return Window(DEFAULT_WINDOW[provider], f"the default for {provider}")


def _ask_server(model: str, base_url: str, headers: dict) -> Window | None:
    base = base_url.rstrip("/")
    root = base[:-3] if base.endswith("/v1") else base
    for ask in (_vllm_or_llamacpp_models, _llamacpp_props, _ollama_show):
        try:
            found = ask(model, base, root, headers)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            found = None  # not this kind of server, or not reachable: try the next question
        if found is not None:
            return found
    return None


def _vllm_or_llamacpp_models(model: str, base: str, root: str, headers: dict) -> Window | None:
    listing = _get_json(f"{base}/models", headers)
    entries = [e for e in listing.get("data", []) if isinstance(e, dict)]
    chosen = next((e for e in entries if e.get("id") == model), entries[0] if len(entries) == 1 else None)
    if chosen is None:
        return None
    if isinstance(chosen.get("max_model_len"), int):
        return Window(chosen["max_model_len"], "the server's /v1/models (max_model_len)")
    meta = chosen.get("meta") or {}
    if isinstance(meta.get("n_ctx"), int) and not _has_props(root, headers):
        return Window(meta["n_ctx"], "the server's /v1/models (n_ctx)")
    return None  # llama.cpp: its /props says what one slot holds, which is what a request gets


def _has_props(root: str, headers: dict) -> bool:
    try:
        return isinstance(_get_json(f"{root}/props", headers), dict)
    except (OSError, ValueError):
        return False


def _llamacpp_props(model: str, base: str, root: str, headers: dict) -> Window | None:
    props = _get_json(f"{root}/props", headers)
    n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
    return Window(n_ctx, "llama.cpp's /props (n_ctx per slot)") if isinstance(n_ctx, int) and n_ctx > 0 else None


def _ollama_show(model: str, base: str, root: str, headers: dict) -> Window | None:
    shown = _post_json(f"{root}/api/show", {"model": model}, headers)
    for line in str(shown.get("parameters") or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "num_ctx" and parts[1].isdigit():
            return Window(int(parts[1]), "Ollama's /api/show (num_ctx)")
    trained = next((v for k, v in (shown.get("model_info") or {}).items() if k.endswith(".context_length")), None)
    if trained is None:
        return None
    # Ollama runs a model at its own default unless num_ctx is set, and cuts a longer prompt
    # silently from the front: fit the default.
    return Window(min(int(trained), OLLAMA_DEFAULT_CTX), "Ollama's default num_ctx (set num_ctx for more)")


def _headers(api_key: str | None) -> dict:
    # A key for the server the user named (vLLM with --api-key); never logged.
    key = api_key or os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _get_json(url: str, headers: dict) -> dict:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
        return json.loads(response.read())


def _post_json(url: str, body: dict, headers: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
        return json.loads(response.read())


# -- a refusal for length --------------------------------------------------------------------

_TOO_LONG = re.compile(r"exceeds the available context size|maximum context length|context_length_exceeded|"
                       r"prompt is too long|context window|too many tokens|input is too long", re.I)
# "request (8995 tokens) exceeds the available context size (8192 tokens)" (llama.cpp)
_LLAMACPP = re.compile(r"\((\d+) tokens\) exceeds the available context size \((\d+) tokens\)")
# "maximum context length is 8192 tokens. However, you requested 9000 tokens" (OpenAI, older
# vLLM); "... However, your request has 9000 input tokens" and "... and your request has 5000
# input tokens" (vLLM now, the latter when the prompt fits but not with the reply's cap)
_MAXIMUM = re.compile(r"maximum context length is (\d+) tokens.*?(?:requested|resulted in|request has) (\d+)"
                      r"(?: input)? tokens", re.S)
# "prompt is too long: 210000 tokens > 200000 maximum" (Anthropic)
_ANTHROPIC = re.compile(r"prompt is too long: (\d+) tokens > (\d+) maximum")


@dataclass(frozen=True)
class Exceeded:
    """A server's refusal of a prompt as too long, with its numbers where it gave them."""

    tokens: int | None  # what the request came to, by the server's count
    limit: int | None  # the window


def exceeded(message: str) -> Exceeded | None:
    if not _TOO_LONG.search(message):
        return None
    if m := _LLAMACPP.search(message):
        return Exceeded(int(m[1]), int(m[2]))
    if m := _MAXIMUM.search(message):
        return Exceeded(int(m[2]), int(m[1]))
    if m := _ANTHROPIC.search(message):
        return Exceeded(int(m[1]), int(m[2]))
    return Exceeded(None, None)


# -- counting ------------------------------------------------------------------------------

class TokenGauge:
    """Tokens from characters, corrected by what the server counted. Shared by a client's
    calls on every lane (hence the lock)."""

    def __init__(self, chars_per_token: float = START_CHARS_PER_TOKEN):
        self.chars_per_token = chars_per_token
        self._lock = threading.Lock()

    def tokens(self, chars: int) -> int:
        return int(chars / self.chars_per_token) + 1

    def observe(self, chars: int, tokens: int | None) -> None:
        """The server counted `tokens` for a prompt of `chars` characters: keep the lower of
        the two ratios seen so far, so estimates stay on the safe side."""
        if not tokens or chars < 2000:  # a tiny prompt is mostly template overhead
            return
        with self._lock:
            self.chars_per_token = max(MIN_CHARS_PER_TOKEN, min(self.chars_per_token, chars / tokens) if
                                       self._seen else chars / tokens)
            self._seen = True

    _seen = False
