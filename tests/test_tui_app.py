"""The app on deterministic events and a recording `submit` (no engine): the action registry,
what each key sends with who sent it, dialogs that swallow stray keys, filtering, sorting,
the mouse, and the coalescing of a burst of progress into one redraw per lane."""

import asyncio

from scheduler.engine import control
from tui import actions
from tui.app import ResearchApp
from tui.confirm import ConfirmScreen
from tui.experiments import ExperimentsPanel
from tui.help import HelpScreen
from tui.lane_pane import LanePane

from tui_fakes import link, progress, research


def drive(app, scenario, size=(100, 30)):
    async def main():
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await scenario(pilot)
    asyncio.run(main())


def fed(count=2, review=False, **kwargs):
    app = ResearchApp(link(count, review=review), user="ada", **kwargs)
    for event in research(count):
        app.sink(event)
    return app


def sent(app):
    return app.link.submit.commands


def test_every_action_has_a_key_a_palette_entry_and_a_help_line():
    app = fed(review=True)

    async def scenario(pilot):
        keys = {(binding.action, binding.key) for binding in app.BINDINGS}
        titles = [command.title for command in app.get_system_commands(app.screen)]
        help_text = "\n".join(f"{key} {text}" for _, key, text in actions.help_rows())
        for action in actions.ACTIONS:
            assert (action.name, action.keys) in keys
            assert action.help in help_text
            if action.name != "command_palette":
                assert f"{action.label} ({action.display})" in titles
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)

    drive(app, scenario)


def test_the_command_palette_runs_the_same_actions_as_the_keys():
    app = fed()

    async def scenario(pilot):
        app.query_one(ExperimentsPanel).select(6)
        await pilot.press("ctrl+p")
        await pilot.press(*"keep (k)")
        await pilot.pause(0.3)  # the palette searches in the background
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        assert sent(app) == [control.Keep(6, by="ada via tui")]

    drive(app, scenario)


def test_p_shows_pausing_at_once_and_sends_the_selected_lane_with_who():
    app = fed()

    async def scenario(pilot):
        await pilot.press("2", "p")
        assert app.view.lanes[1].pending == "pausing"
        assert "pausing…" in str(app.panes[1].border_subtitle)
        assert sent(app) == [control.PauseLane(1, by="ada via tui")]

    drive(app, scenario)


def test_keys_behind_a_dialog_do_nothing():
    app = fed()

    async def scenario(pilot):
        app.query_one(ExperimentsPanel).select(6)
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("p", "s", "r", "d")
        assert sent(app) == []
        await pilot.press("escape")
        assert not isinstance(app.screen, ConfirmScreen) and sent(app) == []

    drive(app, scenario)


def test_keep_is_refused_on_a_run_without_a_result():
    app = fed()

    async def scenario(pilot):
        app.query_one(ExperimentsPanel).select(5)  # the OOM
        await pilot.press("k")
        assert not isinstance(app.screen, ConfirmScreen) and sent(app) == []

    drive(app, scenario)


def test_slash_filters_the_table_and_escape_clears_it():
    app = fed()

    async def scenario(pilot):
        table = app.query_one("#table")
        assert table.row_count == 9
        await pilot.press("slash", *"keep", "enter")
        assert table.row_count == 4  # the two baselines, #3 and #6
        await pilot.press("k")  # the filter box let go of the keyboard: k is keep again
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape", "escape")
        assert table.row_count == 9

    drive(app, scenario)


def test_o_and_a_click_on_a_column_title_sort_the_table():
    app = fed()

    async def scenario(pilot):
        panel = app.query_one(ExperimentsPanel)
        await pilot.press("o")  # id -> value
        assert panel.sort_key == "value" and panel.table.get_row_at(0)[0].plain == "6"
        await pilot.click("#table", offset=(2, 0))  # the "#" column title
        assert panel.sort_key == "id" and panel.table.get_row_at(0)[0].plain == "1"

    drive(app, scenario)


def test_a_click_selects_a_lane():
    app = fed()

    async def scenario(pilot):
        await pilot.click("#lane-1")
        assert app.selected_lane == 1 and app.panes[1].has_class("-selected")
        assert not app.panes[0].has_class("-selected")

    drive(app, scenario)


def test_a_and_x_are_offered_only_in_review_mode():
    plain, review = fed(), fed(review=True)

    async def scenario(pilot):
        titles = [command.title for command in pilot.app.get_system_commands(pilot.app.screen)]
        assert ("approve (a)" in titles) is pilot.app.view.review
        await pilot.press("a")
        assert sent(pilot.app) == ([control.Approve(9, by="ada via tui")] if pilot.app.view.review else [])

    drive(plain, scenario)
    drive(review, scenario)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_burst_of_progress_is_drawn_once_a_second_per_lane(monkeypatch):
    clock = Clock()
    app = fed(count=8, clock=clock)
    shown = []
    original = LanePane.show

    def counting(pane, view):
        shown.append(pane.view.lane)
        original(pane, view)

    def burst(upto):
        for lane in range(8):
            for event in progress(lane, 7 + lane, upto):
                app.sink(event)
        app.drain()

    async def scenario(pilot):
        await pilot.pause()
        monkeypatch.setattr(LanePane, "show", counting)
        clock.now += 1.0
        burst(50)  # ~96 progress lines a lane
        assert sorted(shown) == list(range(8))  # one redraw a lane, however many lines
        shown.clear()
        clock.now += 0.5
        burst(60)
        assert shown == []  # the same second: the numbers wait...
        assert len(app.view.lanes[3].curve) > 0 and app.view.lanes[3].progress.pct > 50  # ...but are all kept
        clock.now += 0.5
        app.drain()
        assert sorted(shown) == list(range(8))
        shown.clear()
        app.view.asked(2, "pausing")  # an answer to a key is not held back
        app.drain()
        assert shown == [2]

    drive(app, scenario, size=(120, 40))


def test_c_asks_then_sends_confirm_and_the_header_shows_the_claim():
    from results.claim import Claim
    from scheduler.engine import events
    from tui.header import ResearchHeader

    app = fed()

    async def scenario(pilot):
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        assert [c for c in sent(app) if isinstance(c, control.Confirm)] == [control.Confirm(by="ada via tui")]
        claim = Claim("val_bpb", "a" * 40, "b" * 40, "H100", (11, 13, 15), (12, 14, 16), (1.0, 1.002, 0.998),
                      (0.99, 0.991, 0.989), 0.01, 0.0075, 0.0125, 0.0003, 4.0)
        app.sink(events.Claimed(claim))
        await pilot.pause()
        app.drain()
        await pilot.pause()
        header = app.query_one(ResearchHeader)._shown
        assert "claim +0.0100 ± 0.0025" in header
    drive(app, scenario, size=(150, 30))
