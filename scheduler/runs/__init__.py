"""One experiment as a child process and the ground it runs on: the executor interface and the
local executor (executor.py), reading the run contract (runparse.py), the sandbox (sandbox.py),
git worktrees and the frontier branch (workspace.py), and keeping provider keys from every
child (keys.py). Knows nothing of the engine that schedules it."""
