"""Keys that no process environment holds (scheduler/runs/key_sources.py): a key file only its
owner may read, a command run once, the OS keyring (the real `keyring` library with a backend of
this file's), then the environment. Real headless nights with `--sandbox none` and a planted
trainer that reads every /proc/*/environ it can and every file of its home: given by file or by
command the key is nowhere, and the loopback server still receives it on every call; given by
the environment through a launcher that stays (a shell), the probe finds the launcher's copy, and
the started notice says so. Bad key files and commands are one sentence and exit code 2."""

import json
import os
import stat
import subprocess
import sys

import keyring
import pytest
from keyring.backend import KeyringBackend

from fake_research import FAKE_TRAIN, make_repo
from llm_servers import OpenAIServer, Text, ToolCalls
from scheduler.runs.key_sources import KEYRING_SERVICE, KeySource, KeySourceError, provider_key
from test_agents_llm import _tool_names, _tool_results
from test_supervisor_cli import ENTRY, ROOT

KEY = "sk-keysource-7f3a9c1e5b2d4680"

# Before the summary, the planted trainer looks where a same-user process can: every process's
# environment block and every file under its home. It prints what it found as summary keys.
PROBE = '''
def _probe(secret):
    import glob
    found = []
    for path in glob.glob("/proc/[0-9]*/environ"):
        try:
            with open(path, "rb") as f:
                if secret.encode() in f.read():
                    found.append(path)
        except OSError:
            pass
    for folder, _, files in os.walk(os.path.expanduser("~")):
        for name in files:
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    if secret.encode() in f.read():
                        found.append(os.path.join(folder, name))
            except OSError:
                pass
    return found

'''


def planted_train(secret: str) -> str:
    # the secret is spelled backwards in the source, so that reading the worktree finds nothing
    probe = PROBE + f'_found = _probe("{secret[::-1]}"[::-1])\n'
    text = FAKE_TRAIN.replace('print("---")', 'print("---")\nprint(f"key_found_in: [{len(_found)}] {_found}")', 1)
    return text.replace("leaked = sorted(", probe + "leaked = sorted(", 1)


class Proposes:
    """A scripted model: one change of VALUE, submitted."""

    def __call__(self, body):
        tools = _tool_names(body)
        if not tools:
            return Text("VALUE decides.")
        if "assign" in tools:
            return ToolCalls([("assign", {"directions": [{"lane": 0, "direction": "VALUE"}], "rationale": "one lane"})])
        if _tool_results(body) == 0:
            return ToolCalls([("set_hyperparameters", {"values": {"VALUE": "0.9"}})])
        return ToolCalls([("submit", {"description": "lower VALUE", "hypothesis": "val_bpb follows it"})])


def night(tmp_path, server, *extra, env_key=False, launcher=False):
    """One short headless night of the OpenAI agent, not sandboxed, its home a folder of its own."""
    repo = make_repo(tmp_path / "repo", {"train.py": planted_train(KEY)})
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    (home / ".config" / "notes.txt").write_text("nothing secret here\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env.update({"PYTHONPATH": str(ROOT), "HOME": str(home)})
    if env_key:
        env["OPENAI_API_KEY"] = KEY
    argv = [sys.executable, "-c", ENTRY, "--no-ui", "--gpus", "cpu:1", "--repo", str(repo), "--tag", "t",
            "--editable", "train.py", "--command", "python train.py", "--budget", "1", "--baseline-runs", "1",
            "--max-experiments", "2", "--no-confirm", "--sandbox", "none", "--agent", "openai:gpt-4.1-mini",
            "--base-url", server.base_url, "--db", str(tmp_path / "log.duckdb"), *extra]
    if launcher:  # as `uv run` or a shell does: a parent that stays, with the key in its environment
        argv = ["sh", "-c", '"$@"; exit $?', "sh", *argv]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    seen = [json.loads(line) for line in done.stdout.splitlines()]
    found = [e["experiment"]["extra"].get("key_found_in", "") for e in seen if e["event"] == "run_finished"]
    started = next((e["message"] for e in seen if e["event"] == "notice" and e["message"].startswith("started ")), "")
    return done, found, started


def key_file(tmp_path, mode=0o600):
    path = tmp_path / "secrets" / "openai.key"
    path.parent.mkdir(exist_ok=True)
    path.write_text(KEY + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("source", ["file", "command"])
def test_a_key_from_a_file_or_a_command_is_in_no_environment_and_still_reaches_the_provider(tmp_path, source):
    path = key_file(tmp_path)
    given = ["--key-file", str(path)] if source == "file" else ["--key-command", f"cat {path}"]
    with OpenAIServer(Proposes()) as server:
        done, found, started = night(tmp_path, server, *given, launcher=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(found) == 2 and all(f.startswith("[0]") for f in found), found  # probed twice, found nowhere
    assert server.requests and all(r.api_key == KEY for r in server.requests)
    said = f"the provider key: OPENAI_API_KEY from the {'key file' if source == 'file' else 'key command'}"
    assert said in started and "in no process environment" in started
    assert KEY not in done.stdout + done.stderr


def test_a_key_from_the_environment_stays_in_the_launcher_and_the_notice_says_so(tmp_path):
    with OpenAIServer(Proposes()) as server:
        done, found, started = night(tmp_path, server, env_key=True, launcher=True)
    assert done.returncode == 0, done.stderr[-3000:]
    # the probe is real: the shell that launched the supervisor still holds the key, and an
    # unsandboxed run reads it there (the supervisor's own copy is blanked)
    assert found and all(not f.startswith("[0]") for f in found), found
    assert all(r.api_key == KEY for r in server.requests)
    assert "OPENAI_API_KEY from the environment" in started and "a run can read them" in started
    assert "--key-file, key_command or the keyring avoid that" in started


def test_a_key_file_others_may_read_and_a_failing_command_are_refused_in_one_sentence(tmp_path):
    path = key_file(tmp_path, 0o644)
    db = tmp_path / "x.duckdb"
    base = [sys.executable, "-c", ENTRY, "--no-ui", "--gpus", "cpu:1", "--repo", str(tmp_path), "--agent",
            "openai:gpt-4.1-mini", "--db", str(db)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*base, "--key-file", str(path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith(
        f"the key file {path} may be read by others (mode 644): `chmod 600 {path}` first."), done.stderr
    failing = "sh -c 'echo sk-leaked-by-a-failing-command; exit 3'"
    done = subprocess.run([*base, "--key-command", failing], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith(
        f"key_command `{failing}` failed (exit code 3)."), done.stderr
    assert "sk-leaked-by-a-failing-command" not in done.stdout + done.stderr.replace(failing, "")
    assert not db.exists()  # refused before anything was written


class MemoryKeyring(KeyringBackend):
    """A keyring backend held in memory: the library is real, the OS store is not on this machine."""

    priority = 1

    def __init__(self):
        super().__init__()
        self.entries = {}

    def get_password(self, service, username):
        return self.entries.get((service, username))

    def set_password(self, service, username, password):
        self.entries[(service, username)] = password

    def delete_password(self, service, username):
        self.entries.pop((service, username), None)


def test_the_sources_in_order_file_command_keyring_environment(tmp_path):
    saved = keyring.get_keyring()
    store = MemoryKeyring()
    keyring.set_keyring(store)
    try:
        env = {"OPENAI_API_KEY": "sk-from-env"}
        found = provider_key("openai", environment=env)
        assert (found.source, found.value) == (KeySource.ENVIRONMENT, "sk-from-env")
        keyring.set_password(KEYRING_SERVICE, "OPENAI_API_KEY", "sk-from-keyring")
        found = provider_key("openai", environment=env)
        assert (found.source, found.value) == (KeySource.KEYRING, "sk-from-keyring")
        assert "sk-from" not in repr(found) and found.said() == (
            "OPENAI_API_KEY from the keyring (service autoresearch-tui, user OPENAI_API_KEY)")
        found = provider_key("openai", key_command="printf 'sk-from-command\\nnotes'", environment=env)
        assert (found.source, found.value) == (KeySource.COMMAND, "sk-from-command")
        path = key_file(tmp_path)
        found = provider_key("openai", key_file=path, key_command="false", environment=env)
        assert (found.source, found.value) == (KeySource.FILE, KEY)
        assert provider_key("anthropic", environment=env) is None
    finally:
        keyring.set_keyring(saved)
    with pytest.raises(KeySourceError, match="does not exist"):
        provider_key("openai", key_file=tmp_path / "missing")
    (tmp_path / "two").write_text("sk-a\nsk-b\n")
    (tmp_path / "two").chmod(stat.S_IRUSR)
    with pytest.raises(KeySourceError, match="must hold the key alone, on one line"):
        provider_key("openai", key_file=tmp_path / "two")
    with pytest.raises(KeySourceError, match="is not a program on PATH"):
        provider_key("openai", key_command="no-such-password-manager show openai")
    with pytest.raises(KeySourceError, match="printed no key"):
        provider_key("openai", key_command="true")
