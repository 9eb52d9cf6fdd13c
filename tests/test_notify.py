"""Notifications (autoresearch_tui/notify.py) delivered over real HTTP to a receiver on
127.0.0.1: the three bodies, the engine's own notices picked by topic in a real night that
loses a lane, a receiver that is down or slow, and keys struck out of what is sent. (The
plateau night in test_plateau.py sends keep, plateau and end-of-night through the command line.)"""

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autoresearch_tui.notify import Destination, Notifier, NotifyError, Style
from results.records import DecisionSource, Experiment
from scheduler.engine import events
from scheduler.engine.inbox import GpuLost

KEY = "sk-notify-secret-0123456789"


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict
    body: bytes
    at: float

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every POST; `delay` seconds before it answers."""

    def __init__(self, delay: float = 0.0, status: int = 200):
        self.posts: list[Post] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.posts.append(Post(self.path, dict(self.headers), body, time.monotonic()))
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def at(self, path: str) -> list[Post]:
        with self.lock:
            return [p for p in self.posts if p.path == path]


def a_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_destinations_are_parsed_and_a_bad_one_is_one_sentence():
    assert Destination.parse("https://example.org/hook") == Destination("https://example.org/hook", Style.JSON)
    assert Destination.parse("slack:https://hooks.slack.com/services/T/B/x").style is Style.SLACK
    ntfy = Destination.parse("ntfy:https://ntfy.sh/my-lab")
    assert ntfy == Destination("https://ntfy.sh/my-lab", Style.NTFY) and ntfy.shown == "https://ntfy.sh"
    for bad in ("ftp://example.org/x", "slack:hooks.slack.com/T/B/secretpath", "nothing"):
        with pytest.raises(NotifyError) as caught:
            Destination.parse(bad)
        assert "secretpath" not in str(caught.value) and str(caught.value).endswith(".")


def test_each_style_gets_its_own_body_and_no_key(tmp_path):
    with Receiver() as receiver:
        notifier = Notifier([Destination.parse(f"{receiver.url}/json"), Destination.parse(f"slack:{receiver.url}/slack"),
                             Destination.parse(f"ntfy:{receiver.url}/ntfy")], "dec5", secrets=(KEY,))
        experiment = Experiment(run_id="r", lane=0, description="MATRIX_LR x1.2", id=7)
        for event in (events.ProposalReady(0, experiment),
                      events.Decided(7, "keep", DecisionSource.AUTO, "better", delta=0.0042, sigma=0.0014),
                      events.FrontierAdvanced("b" * 40, "a" * 40, 7, 0.9812),
                      events.Notice(events.Level.WARNING, "lane 1: not in the notifications", 1),
                      events.Notice(events.Level.ERROR, f"lane 1 is out of service: the provider said\n{KEY}", 1,
                                    events.Topic.LANE_LOST),
                      events.Notice(events.Level.WARNING, "the spending limit of $5.00 is reached", None,
                                    events.Topic.SPENDING_LIMIT),
                      events.Finished("3 experiments run", 3, "b" * 40)):
            notifier(event)
        notifier.close()
    posts = {path: receiver.at(path) for path in ("/json", "/slack", "/ntfy")}
    assert [len(p) for p in posts.values()] == [4, 4, 4]  # keep, lost lane, limit, end; the plain notice is not sent
    keep, lost, limit, end = [p.json for p in posts["/json"]]
    assert [b["event"] for b in (keep, lost, limit, end)] == ["keep", "lane_lost", "spending_limit", "finished"]
    assert keep["text"] == ("autoresearch dec5: keep #7 (MATRIX_LR x1.2): val_bpb 0.981200, 0.004200 better than "
                            "its parent (3.0 sigma); frontier bbbbbbbb")
    assert keep["experiment_id"] == 7 and keep["value"] == 0.9812 and keep["tag"] == "dec5"
    assert lost["text"] == "autoresearch dec5: lane 1 is out of service: the provider said [a key]"
    assert end["text"] == "autoresearch dec5 finished (3 experiments run): 3 experiment(s) run, frontier bbbbbbbb"
    assert [p.json for p in posts["/slack"]] == [{"text": b["text"]} for b in (keep, lost, limit, end)]
    assert [p.body.decode() for p in posts["/ntfy"]] == [b["text"] for b in (keep, lost, limit, end)]
    ntfy = posts["/ntfy"]
    assert [p.headers["Title"] for p in ntfy] == ["autoresearch dec5: " + k for k in
                                                  ("keep", "lane lost", "spending limit", "finished")]
    assert ntfy[1].headers["Priority"] == "high" and ntfy[0].headers["Tags"] == "tada"
    assert not any(KEY.encode() in p.body or KEY in json.dumps(p.headers) for p in receiver.posts)


def test_a_receiver_that_is_down_or_slow_holds_nothing_back_and_is_logged_once(caplog, monkeypatch):
    import autoresearch_tui.notify as notify

    monkeypatch.setattr(notify, "TIMEOUT_S", 1.0)
    caplog.set_level(logging.WARNING, "autoresearch.notify")
    with Receiver(delay=10.0) as slow, Receiver() as quick:
        down = f"http://127.0.0.1:{a_closed_port()}/hook/secret-part"
        notifier = Notifier([Destination.parse(down), Destination.parse(f"{slow.url}/slow"),
                             Destination.parse(f"{quick.url}/quick")], "t")
        began = time.monotonic()
        for n in range(5):
            notifier(events.Finished(f"night {n}", n, "c" * 40))
        queued = time.monotonic() - began
        deadline = time.monotonic() + 10
        while len(quick.at("/quick")) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        delivered = time.monotonic() - began
        time.sleep(max(0.0, began + 2.5 - time.monotonic()))  # the slow one's first two deliveries time out
        notifier.close(wait_s=0.5)
    assert queued < 0.5, f"the consumer waited {queued:.2f} s on its receivers"
    assert len(quick.at("/quick")) == 5 and delivered < 1.0, "a slow receiver held back a quick one"
    assert len(slow.at("/slow")) >= 2
    said = [r.getMessage() for r in caplog.records]
    failed = [m for m in said if "could not be delivered" in m]
    assert sorted(m.split()[2] for m in failed) == sorted([down.rsplit("/", 2)[0], slow.url]), said  # once each
    assert [m.split()[2] for m in said if "when the night ended" in m] == [f"{slow.url}:"]
    assert not any("secret-part" in m for m in said)


def test_a_night_that_loses_a_lane_sends_it_and_its_end(tmp_path):
    from test_engine import ScriptedProposer, engine

    with Receiver() as receiver:
        notifier = Notifier([Destination.parse(f"{receiver.url}/n")], "t")

        def sink(event):
            notifier(event)
            if isinstance(event, events.RunFinished) and event.experiment.kind.value == "baseline" \
                    and not any(lane.lost for lane in sup.lanes):
                sup.inbox.put(GpuLost(1, "the GPU has fallen off the bus"))

        sup, store, received = engine(tmp_path, ScriptedProposer([{"VALUE": 0.9}, {"VALUE": 0.8}]),
                                      max_experiments=4, sink=sink)
        assert sup.run() == 0
        notifier.close()
    bodies = [p.json for p in receiver.at("/n")]
    kinds = [b["event"] for b in bodies]
    assert kinds.count("lane_lost") == 1 and kinds[-1] == "finished" and kinds.count("finished") == 1, kinds
    (lost,) = [b for b in bodies if b["event"] == "lane_lost"]
    assert lost["text"] == "autoresearch t: lane 1 is out of service: the GPU has fallen off the bus"
    assert "keep" in kinds  # VALUE 0.9 moved the frontier
    assert any(isinstance(e, events.Notice) and e.topic is events.Topic.LANE_LOST for e in received)
