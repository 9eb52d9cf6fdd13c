"""Keeping the provider keys out of reach of the code the night runs.

Every experiment runs a program an LLM wrote, with the user's rights. A training child gets an
allow-listed environment without secrets (scheduler/executor.py), but two ways to the keys
remained: any process of the same user could read the supervisor's `/proc/<pid>/environ`, and
every helper the supervisor starts (git, gitpython's cat-file, setpriv, prepare.py) inherited
its environment. So, first thing at start-up, the provider keys are taken out of the
environment into memory (the SDK clients get them as arguments), and the process makes itself
non-dumpable, which turns its /proc entries over to root: same-user processes can no longer
read them (nor ptrace it; py-spy needs sudo while a night runs). What this cannot do: hide the
key from root, or from the original environment block a same-user reader could see before the
process turned non-dumpable (a fraction of a second at start-up)."""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("autoresearch")

PROVIDER_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")  # what the SDK clients are given as api_key
_PR_SET_DUMPABLE, _PR_GET_DUMPABLE = 4, 3


def take_provider_keys(environ=os.environ) -> dict[str, str]:
    """The provider keys, removed from the environment (so nothing started later inherits them)."""
    return {name: environ.pop(name) for name in PROVIDER_KEYS if environ.get(name)}


def make_undumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0) on Linux; False where it is not available."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def is_dumpable() -> bool | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) == 1
    except (OSError, AttributeError):
        return None
