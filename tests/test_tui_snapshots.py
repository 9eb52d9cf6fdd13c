"""Snapshots (SVG, compared byte for byte) of the main screen and the detail screen, built from
deterministic events: fixed times, telemetry, curves and clock, and no engine. After a
deliberate change of the layout: `pytest tests/test_tui_snapshots.py --snapshot-update`, and
look at the new SVGs before committing them."""

import json
import os
import subprocess
from dataclasses import replace

from results.records import Status
from scheduler.engine import events
from tui.app import ResearchApp
from tui.detail import DetailScreen

from tui_fakes import experiment, link, research

ELAPSED = 3723.0  # the header's clock reads 1:02:03


def app_with(count, *, repo=None, cpu=False, extra_events=()):
    app = ResearchApp(link(count, repo=repo, cpu=cpu), clock=lambda: 0.0, user="ada")
    app.started = -ELAPSED
    for event in [*research(count), *extra_events]:
        app.sink(event)
    return app


async def no_toasts(pilot):
    """The fake night includes a person's keep, which a live app announces in a toast; the
    snapshots are of the screen under it."""
    await pilot.pause()
    pilot.app.drain()
    pilot.app.clear_notifications()
    await pilot.pause()


def test_main_screen_two_gpu_lanes_at_80x24(snap_compare):
    assert snap_compare(app_with(2), terminal_size=(80, 24), run_before=no_toasts)


def test_main_screen_eight_lanes_fit_80x24(snap_compare):
    assert snap_compare(app_with(8), terminal_size=(80, 24), run_before=no_toasts)


def test_main_screen_three_lanes_wide_with_the_best_so_far_chart(snap_compare):
    assert snap_compare(app_with(3), terminal_size=(150, 42), run_before=no_toasts)


def _repo(root):
    """A research repository with one change, committed at a fixed time (fixed hashes)."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_AUTHOR_DATE": "1767225600 +0000",
           "GIT_COMMITTER_DATE": "1767225600 +0000"}
    root.mkdir()
    source = "# hyperparameters\nDEPTH = 8\nMATRIX_LR = 0.04\nEMBEDDING_LR = 0.6\nWEIGHT_DECAY = 0.2\n"
    (root / "train.py").write_text(source)
    run = lambda *args: subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True,  # noqa: E731
                                       text=True).stdout.strip()
    run("init", "-q", "-b", "main")
    run("add", ".")
    run("commit", "-qm", "start")
    parent = run("rev-parse", "HEAD")
    (root / "train.py").write_text(source.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05"))
    run("commit", "-qam", "MATRIX_LR 0.04 -> 0.05 (x1.25)")
    return parent, run("rev-parse", "HEAD")


def test_detail_screen_shows_the_diff_of_the_selected_experiment(snap_compare, tmp_path):
    parent, commit = _repo(tmp_path / "repo")
    log = tmp_path / "000003.log"
    log.write_text("step 00000 (0.0%) | loss: 9.01\rstep 00001 (0.1%) | loss: 8.95\n---\nval_bpb: 0.991000\n")
    transcript = tmp_path / "t.jsonl"
    transcript.write_text(json.dumps({"role": "assistant", "content": "Raise the matrix learning rate."}) + "\n")
    exp = replace(experiment(3, 0, "MATRIX_LR 0.04 -> 0.05 (x1.25)", status=Status.OK, value=0.991),
                  commit=commit, parent_commit=parent, log_path=str(log), notes={"transcript": str(transcript)})
    app = app_with(2, repo=tmp_path / "repo", extra_events=[events.RunFinished(0, exp)])

    async def open_details(pilot):
        await no_toasts(pilot)
        app.open_details(3)
        await pilot.pause()
        while app.screen.diff_text is None:  # git runs on a worker thread
            await pilot.pause(0.05)
        assert isinstance(app.screen, DetailScreen)

    assert snap_compare(app, terminal_size=(100, 30), run_before=open_details)
