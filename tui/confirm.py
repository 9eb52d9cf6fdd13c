"""A question before anything that cannot be taken back by another key: keeping or discarding a
result, stopping a run, quitting. Each answer has its own key; escape and enter say "no"."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Static


@dataclass(frozen=True)
class Choice:
    key: str  # a textual key name
    label: str
    value: str | None  # what the screen returns; None is "no"
    variant: str = "default"


class ConfirmScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape,n", "answer(None)", "cancel", show=False)]

    def __init__(self, question: str, detail: str, choices: list[Choice]) -> None:
        super().__init__(classes="confirm")
        self.question, self.detail, self.choices = question, detail, choices

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question")
            if self.detail:
                yield Static(self.detail, id="detail")
            with Horizontal(id="choices"):
                for i, choice in enumerate(self.choices):
                    yield Button(Content(f"{choice.label} ({choice.key})"), id=f"choice-{i}", variant=choice.variant)

    def on_mount(self) -> None:
        # The focused answer (what enter picks) is the harmless one: a stray k then enter
        # must not undo a night's result.
        harmless = next((i for i, c in enumerate(self.choices) if c.value is None), 0)
        self.query_one(f"#choice-{harmless}", Button).focus()

    def on_key(self, event) -> None:
        for choice in self.choices:
            if event.key == choice.key:
                event.stop()
                self.dismiss(choice.value)
                return

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.choices[int(event.button.id.split("-")[1])].value)

    def action_answer(self, value: str | None) -> None:
        self.dismiss(value)
