"""The research engine and what it runs on, UI-free:

    engine/    the loop and everything it owns (state, inbox, judging, noise, frontier moves, events)
    runs/      one experiment as a supervised child: executor, sandbox, output parsing, worktrees, keys
    cluster/   the Ray executor (the only package that imports ray)
    config.py  the session's settings; gpus.py: NVML discovery and telemetry

engine/ imports runs/ and the two modules here; runs/ and cluster/ never import engine/.
tests/test_layers.py holds these arrows."""
