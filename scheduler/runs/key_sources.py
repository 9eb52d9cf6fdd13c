"""Where the provider key comes from, so that no process environment need hold it.

The supervisor takes a key out of its own environment at start (keys.py), but a key exported in
the shell stays in the environment of every process that started it: `uv run`, the shell, a
`timeout`. Their /proc/<pid>/environ is readable by any process of the same user, a training
run with `--sandbox none` or on a Ray node included (the sandbox's PID namespace hides them).
So a key can come from places no environment sees, in this order:

1. a file (`--key-file PATH`, `key_file` in the TOML), refused unless only its owner may read it;
2. a command (`key_command = "pass show openai"`), run once at start; its output is never logged,
   and a failure names the command, never what it printed;
3. the OS keyring, through the `keyring` library: service `autoresearch-tui`, user the variable's
   name (`keyring set autoresearch-tui OPENAI_API_KEY`);
4. the environment (ANTHROPIC_API_KEY, OPENAI_API_KEY), last.

A file or a command given explicitly must work: a bad one is one sentence and exit code 2, never
a silent fall back to the environment."""

from __future__ import annotations

import enum
import logging
import shlex
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("autoresearch")

VARIABLES = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
KEYRING_SERVICE = "autoresearch-tui"
COMMAND_TIMEOUT_S = 60.0  # a password manager may ask for its passphrase first


class KeySource(enum.StrEnum):
    FILE = "key file"
    COMMAND = "key command"
    KEYRING = "keyring"
    ENVIRONMENT = "environment"


class KeySourceError(ValueError):
    """A key file or command that cannot give the key; one sentence, without the key."""


@dataclass(frozen=True)
class ProviderKey:
    variable: str  # the SDK's variable name: which provider it is for
    value: str = field(repr=False)
    source: KeySource
    where: str  # the file, the command, the keyring entry or the variable: never the value

    def said(self) -> str:
        """Where it came from, for doctor and the log."""
        return f"{self.variable} from the {self.source.value} ({self.where})"


def provider_key(provider: str, *, key_file: Path | None = None, key_command: str | None = None,
                 environment: dict[str, str] | None = None, keyring=None) -> ProviderKey | None:
    """The key for `provider` from the first source that has one; None when none has.
    `environment`: the keys taken out of the process environment (keys.take_provider_keys)."""
    variable = VARIABLES[provider]
    if key_file is not None:
        return ProviderKey(variable, _from_file(key_file), KeySource.FILE, str(key_file))
    if key_command:
        return ProviderKey(variable, _from_command(key_command), KeySource.COMMAND, key_command)
    found = _from_keyring(variable, keyring)
    if found:
        return ProviderKey(variable, found, KeySource.KEYRING, f"service {KEYRING_SERVICE}, user {variable}")
    value = (environment or {}).get(variable)
    if value:
        return ProviderKey(variable, value, KeySource.ENVIRONMENT, variable)
    return None


def _from_file(path: Path) -> str:
    path = Path(path).expanduser()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeySourceError(f"the key file {path} may be read by others (mode {mode:o}): `chmod 600 {path}` "
                                 f"first.")
        text = path.read_text().strip()
    except FileNotFoundError:
        raise KeySourceError(f"the key file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeySourceError(f"the key file {path} cannot be read ({getattr(e, 'strerror', None) or e}).") from None
    if not text or len(text.splitlines()) != 1:
        raise KeySourceError(f"the key file {path} must hold the key alone, on one line.")
    return text


def _from_command(command: str) -> str:
    try:
        argv = shlex.split(command)
    except ValueError:
        raise KeySourceError(f"key_command `{command}` is not a command line.") from None
    try:
        # stdin stays the terminal's: a password manager may ask for a passphrase there
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise KeySourceError(f"key_command `{command}`: {argv[0] if argv else 'nothing'} is not a program "
                             f"on PATH.") from None
    except subprocess.TimeoutExpired:
        raise KeySourceError(f"key_command `{command}` did not finish in {COMMAND_TIMEOUT_S:.0f} s.") from None
    except OSError as e:
        raise KeySourceError(f"key_command `{command}` could not start ({e.strerror}).") from None
    if done.returncode != 0:  # what it printed may be the key, or part of it: never said
        raise KeySourceError(f"key_command `{command}` failed (exit code {done.returncode}).")
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if not lines:
        raise KeySourceError(f"key_command `{command}` printed no key.")
    return lines[0]  # `pass show` prints the secret first, then any notes


def _from_keyring(variable: str, keyring) -> str | None:
    """The key in the OS keyring, or None: no keyring here is a normal state, not an error."""
    try:
        if keyring is None:
            import keyring
        return keyring.get_password(KEYRING_SERVICE, variable) or None
    except Exception as e:  # noqa: BLE001 - no backend, a locked one, a D-Bus that is not there
        log.debug("no key from the keyring: %s", type(e).__name__)
        return None
