"""Notifications (`--notify URL`): what a researcher away from the screen should hear of.

One POST per keep that moved the frontier, per plateau warning and end, per lost lane, for the
spending limit and for the end of the night, to every destination, as JSON with a one-line
`text` (the destination's style chooses the body: our JSON, a Slack webhook's, ntfy's plain
text with a title). The engine never waits on a receiver: the consumer only puts a message on
a courier's queue, and each destination has its own courier thread, so one that is down or slow
holds back neither the lanes nor the other destinations. A failure to deliver is logged once
per destination, never raised; the URL is logged by its host alone, since a webhook's path is
its secret. Notices are picked by their topic (events.Topic), never by their words.

What a message may say is the engine's own words about the night; the provider keys are struck
out of it all the same, so that a provider's error quoted in a notice cannot carry one out."""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx2 as httpx

from results.metric import Metric
from results.records import Decision
from scheduler.engine import events

log = logging.getLogger("autoresearch.notify")

TIMEOUT_S = 5.0  # one delivery's connect and read limit; a slower receiver loses the message
QUEUE_LIMIT = 200  # messages waiting per destination; past it the newest are dropped (and logged once)
CLOSE_WAIT_S = 10.0  # how long the end of the night waits for its last messages to go out


class Style(enum.StrEnum):
    JSON = "json"  # {"text": ..., "event": ..., "tag": ..., and the figures}
    SLACK = "slack"  # {"text": ...}: Slack's incoming webhooks, and the many that copy them
    NTFY = "ntfy"  # the text as the body, the title and tags as headers (ntfy.sh and its servers)


class Kind(enum.StrEnum):
    """What a message is about; the `event` field of the JSON body."""

    KEEP = "keep"
    PLATEAU = "plateau"
    LANE_LOST = "lane_lost"
    SPENDING_LIMIT = "spending_limit"
    FINISHED = "finished"


_TOPICS = {events.Topic.PLATEAU: Kind.PLATEAU, events.Topic.LANE_LOST: Kind.LANE_LOST,
           events.Topic.SPENDING_LIMIT: Kind.SPENDING_LIMIT}
_NTFY_TAGS = {Kind.KEEP: "tada", Kind.PLATEAU: "warning", Kind.LANE_LOST: "rotating_light",
              Kind.SPENDING_LIMIT: "moneybag", Kind.FINISHED: "checkered_flag"}


class NotifyError(ValueError):
    """A destination that cannot be used; one sentence."""


@dataclass(frozen=True)
class Destination:
    url: str
    style: Style

    @classmethod
    def parse(cls, text: str) -> Destination:
        """`URL` (our JSON), `slack:URL` or `ntfy:URL`; the URL must be http(s) with a host."""
        style, url = Style.JSON, text.strip()
        for prefix in (Style.SLACK, Style.NTFY):
            if url.startswith(f"{prefix.value}:") and not url.startswith(f"{prefix.value}://"):
                style, url = prefix, url[len(prefix.value) + 1:]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NotifyError(f"--notify {_shown(text)!r} is not an http(s) URL (slack:URL and ntfy:URL "
                              f"choose those bodies).")
        return cls(url, style)

    @property
    def shown(self) -> str:
        """What the log may say of it: scheme and host, never the path that holds a webhook's secret."""
        return _shown(self.url)


def _shown(url: str) -> str:
    parts = urlsplit(url.split(":", 1)[1] if url.startswith(("slack:", "ntfy:")) else url)
    if not parts.hostname:
        return "an unparsable URL"
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class Message:
    kind: Kind
    text: str  # one line
    figures: dict = field(default_factory=dict)  # for the JSON body: experiment_id, value, ...


def body(message: Message, style: Style, tag: str) -> tuple[dict[str, str], bytes | dict]:
    """(headers, body) as the destination's style wants them: a dict is sent as JSON."""
    match style:
        case Style.SLACK:
            return {}, {"text": message.text}
        case Style.NTFY:
            return ({"Title": f"autoresearch {tag}: {message.kind.value.replace('_', ' ')}",
                     "Tags": _NTFY_TAGS[message.kind],
                     "Priority": "high" if message.kind is Kind.LANE_LOST else "default"},
                    message.text.encode())
    return {}, {"text": message.text, "event": message.kind.value, "tag": tag, **message.figures}


class _Courier:
    """One destination's queue and the thread that empties it."""

    def __init__(self, destination: Destination, tag: str):
        self.destination, self.tag = destination, tag
        self.queue: queue.Queue[Message | None] = queue.Queue(QUEUE_LIMIT)
        self.sent = self.failed = self.dropped = 0
        self._told = False  # a failure was logged; later ones are not
        self._thread = threading.Thread(target=self._work, name=f"notify {destination.shown}", daemon=True)
        self._thread.start()

    def put(self, message: Message) -> None:
        try:
            self.queue.put_nowait(message)
        except queue.Full:
            self.dropped += 1
            self._failed(f"{QUEUE_LIMIT} messages waiting")

    def stop(self, deadline: float) -> None:
        """No more messages: the thread ends once the ones queued are sent."""
        try:
            self.queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            pass

    def join(self, deadline: float) -> None:
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():  # a slow receiver: what is still queued is given up with the process
            log.warning("notifications to %s: the last ones were not delivered when the night ended",
                        self.destination.shown)

    def _work(self) -> None:
        with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False) as client:
            while (message := self.queue.get()) is not None:
                headers, content = body(message, self.destination.style, self.tag)
                try:
                    if isinstance(content, dict):
                        response = client.post(self.destination.url, json=content, headers=headers)
                    else:
                        response = client.post(self.destination.url, content=content, headers=headers)
                    response.raise_for_status()
                    self.sent += 1
                except httpx.HTTPStatusError as e:
                    self._failed(f"HTTP {e.response.status_code}")
                except httpx.HTTPError as e:
                    self._failed(type(e).__name__)

    def _failed(self, why: str) -> None:
        self.failed += 1
        if not self._told:
            self._told = True
            log.warning("notifications to %s could not be delivered (%s); the night goes on, and later "
                        "failures to deliver there are not logged", self.destination.shown, why)


class Notifier:
    """An event consumer: turns the engine's events into messages for every destination."""

    def __init__(self, destinations: list[Destination], tag: str, metric: Metric | None = None,
                 secrets: tuple[str, ...] = ()):
        self.tag, self.metric = tag, metric or Metric()
        self._secrets = tuple(s for s in secrets if s)
        self._couriers = [_Courier(d, tag) for d in destinations]
        self._described: dict[int, str] = {}  # experiment id -> its description, for the keep line
        self._kept: dict[int, events.Decided] = {}  # the keep decisions whose frontier move is still to come

    @property
    def couriers(self) -> list[_Courier]:
        return self._couriers

    def __call__(self, event) -> None:
        message = self.message(event)
        if message is not None:
            message = Message(message.kind, self._struck(message.text), message.figures)
            for courier in self._couriers:
                courier.put(message)

    def message(self, event) -> Message | None:
        """The message an event makes, or None: most events make none."""
        match event:
            case events.ProposalReady(experiment=e) | events.RunStarted(experiment=e) if e.id is not None:
                self._described[e.id] = e.description
            case events.Decided(experiment_id=n, decision=d) if d.value == Decision.KEEP.value:
                self._kept[n] = event
            case events.FrontierAdvanced(commit=commit, experiment_id=n, value=value) if n is not None:
                return self._keep(n, commit, value)
            case events.Notice(topic=topic, message=text) if topic is not None:
                return Message(_TOPICS[topic], f"autoresearch {self.tag}: {text}", {"level": event.level.value})
            case events.Finished(reason=reason, experiments=n, frontier=frontier):
                return Message(Kind.FINISHED, f"autoresearch {self.tag} finished ({reason}): {n} experiment(s) "
                                              f"run, frontier {frontier[:8]}",
                               {"reason": reason, "experiments": n, "frontier": frontier})
        return None

    def _keep(self, n: int, commit: str, value: float | None) -> Message:
        decided = self._kept.pop(n, None)
        what = self._described.pop(n, None)
        name = self.metric.name
        line = f"autoresearch {self.tag}: keep #{n}" + (f" ({what})" if what else "")
        if value is not None:
            line += f": {name} {value:.6f}"
        if decided is not None and decided.delta is not None:
            line += f", {abs(decided.delta):.6f} better than its parent"
            if decided.sigma:
                line += f" ({decided.delta / decided.sigma:.1f} sigma)"
        line += f"; frontier {commit[:8]}"
        return Message(Kind.KEEP, line, {"experiment_id": n, "commit": commit, "value": value,
                                         "delta": decided.delta if decided else None})

    def _struck(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[a key]")
        return " ".join(text.split())  # one line, whatever the notice held

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Let the last messages (the end of the night) go out, for at most `wait_s` in all."""
        deadline = time.monotonic() + wait_s
        for courier in self._couriers:  # all told first, so that a slow one takes no time from the others
            courier.stop(deadline)
        for courier in self._couriers:
            courier.join(deadline)
