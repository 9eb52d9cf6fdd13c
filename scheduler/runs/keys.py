"""Keeping the provider keys out of reach of the code the night runs.

Every experiment runs a program an LLM wrote, with the user's rights. A training child gets an
allow-listed environment without secrets (scheduler/runs/executor.py), but two ways to the keys
remained: any process of the same user could read the supervisor's `/proc/<pid>/environ`, and
every helper the supervisor starts (git, gitpython's cat-file, setpriv, prepare.py) inherited
its environment. So, first thing at start-up, the provider keys are taken out of the
environment into memory (the SDK clients get them as arguments), and the process makes itself
non-dumpable, which turns its /proc entries over to root: same-user processes can no longer
read them (nor ptrace it; py-spy needs sudo while a night runs). The key's bytes in the
original environment block are zeroed too, so even root's (or an early reader's) look at
/proc/<pid>/environ finds no key. What this cannot do: hide the key from root reading the
process's memory, or from a reader in the fraction of a second before this ran."""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("autoresearch")

PROVIDER_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")  # what the SDK clients are given as api_key
_PR_SET_DUMPABLE, _PR_GET_DUMPABLE = 4, 3


def take_provider_keys(environ=os.environ) -> dict[str, str]:
    """The provider keys, removed from the environment (so nothing started later inherits them)
    and blanked in the process's original environment block."""
    keys = {name: environ[name] for name in PROVIDER_KEYS if environ.get(name)}
    if environ is os.environ:
        for name in keys:
            _blank_original(name)
    for name in keys:
        environ.pop(name)
    return keys


def _blank_original(name: str) -> None:
    """Overwrite the value of `name` where the kernel put the environment at exec: that block
    is what /proc/<pid>/environ shows, and unsetenv only drops libc's pointer to it. Root (or a
    reader quicker than make_undumpable) then finds `NAME=` and zeros, never the key."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None)
        entries = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
    except (OSError, ValueError, AttributeError):
        return
    prefix = name.encode() + b"="
    i = 0
    while entries[i]:
        address = entries[i]
        text = ctypes.string_at(address)
        if text.startswith(prefix):
            ctypes.memset(address + len(prefix), 0, len(text) - len(prefix))
        i += 1


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
