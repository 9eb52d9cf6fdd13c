"""Benchmark of the terminal UI (tui/): what does drawing eight streaming lanes cost, and how
fast does the screen answer a key while they stream?

    python bench/bench_tui.py [--seconds 20] [--lanes 8] [--rate 20] [--size 160x48] [--size 80x24]

The app runs as a person would run it: a real `App.run()` in its own process, on a
pseudo-terminal this script reads (and discards) like a terminal emulator. Inside that process
a feeder thread stands in for the engine: it calls the app's sink with 20 progress events per
second per lane (upstream's progress-line format, parsed) and one GPU sample per lane per
second, the events a Supervisor emits, for --seconds.

[cpu]  The app process's CPU time (every thread: the event loop, textual's writer and input
       threads) per wall second, as a share of one core, over the window after a 3-second
       warm-up, less the feeder thread's own CPU time (the engine's work, not the app's).
[key]  About every 0.5 s this script writes `p` to the terminal and times how long until the
       screen's bytes carry the answer ("pausing…" or "resuming…" in the selected lane's
       border; with no engine attached the request stays pending, so the two alternate).
       That is the whole path: the pty, textual's input parser, the binding, the action, the
       redraw, the compositor and the bytes back. The interval varies between 0.25 and
       0.75 s (a fixed seed): presses at an exact 0.5 s would all land at one phase of the
       app's once-a-second frame, and a run's figure would depend on where its start fell.

Prints the figures and a table with targets and PASS/MISS. Always exits 0 unless it crashes.
See bench/README.md."""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import pty
import random
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_CPU_PCT = 5.0
TARGET_KEY_MS = 50.0
WARMUP_S = 3.0
KEY_EVERY_S = 0.5
H100 = "NVIDIA H100 80GB HBM3"


# -- the app's process ---------------------------------------------------------------------------

def thread_times() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for thread in threading.enumerate():
        try:
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[thread.name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def child(args) -> None:
    """Run the app on this terminal with a feeder thread; write the CPU figures to args.out."""
    import resource

    from results.records import Experiment, GpuSample, Status
    from scheduler.engine import events
    from scheduler.runs.runparse import parse_progress
    from tui.app import ResearchApp
    from tui.link import EngineLink, LaneInfo

    from textual.screen import Screen

    frames: list[float] = []  # how long each screen update took (the compositor's work)
    refresh = Screen._compositor_refresh

    def timed_refresh(screen) -> None:
        t = time.perf_counter()
        refresh(screen)
        if measuring.is_set():
            frames.append(time.perf_counter() - t)

    Screen._compositor_refresh = timed_refresh
    measuring = threading.Event()
    lanes = [LaneInfo(i, i, H100, 81559.0) for i in range(args.lanes)]
    commands = []
    app = ResearchApp(EngineLink(tag="bench", lanes=lanes, submit=commands.append, review=False), user="bench",
                      freeze_after_start=True)  # as run_tui does
    result = {}
    t0 = datetime(2026, 11, 21)

    def experiment(eid, lane, status=Status.RUNNING, value=None):
        return Experiment(run_id="bench", lane=lane, description=f"KNOB_{eid:03d} = 0.004", status=status, id=eid,
                          gpu_index=lane, gpu_name=H100, summary={"val_bpb": value} if value else {},
                          started_at=t0)

    def feed() -> None:
        # A night's table to draw, then every lane training and streaming.
        eid = 0
        for lane in range(args.lanes):
            for _ in range(4):
                eid += 1
                app.sink(events.RunFinished(lane, experiment(eid, lane, Status.OK, 1.0 - eid / 1000)))
                app.sink(events.Decided(eid, "keep" if eid % 3 == 0 else "discard", "auto", "bench"))
        running = {}
        for lane in range(args.lanes):
            eid += 1
            running[lane] = eid
            app.sink(events.RunStarted(lane, experiment(eid, lane)))
            app.sink(events.LaneChanged(lane, "training", "bench"))
        threads = {}
        start = time.monotonic()
        # The CPU window (no keys), then the key window (a key every half second).
        marks = [("cpu", WARMUP_S), ("keys", WARMUP_S + args.seconds), ("end", WARMUP_S + args.seconds + args.key_seconds)]
        window = {}
        step, next_sample = 0, start
        while True:
            now = time.monotonic()
            elapsed = now - start
            if marks and elapsed >= marks[0][1]:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                threads[marks[0][0]] = thread_times()
                if marks[0][0] == "cpu":
                    measuring.set()
                elif marks[0][0] == "keys":
                    measuring.clear()
                    result["frames_ms"] = [1000 * f for f in frames]
                window[marks.pop(0)[0]] = (usage.ru_utime + usage.ru_stime, time.thread_time(), now)
                if not marks:
                    break
            for lane in range(args.lanes):  # one line per lane per tick, as the trainers print
                pct = min(100.0, step / (args.rate * 300) * 100)
                line = (f"step {step:05d} ({pct:.1f}%) | loss: {3.9 - 1.2 * (1 - math.exp(-step / 900)):.6f} | "
                        f"lrm: 1.00 | dt: 318ms | tok/sec: 1,648,123 | mfu: 39.8% | epoch: 1 | "
                        f"remaining: {300 - step / args.rate:.0f}s")
                app.sink(events.RunProgress(lane, running[lane], parse_progress(line)))
            step += 1
            if now >= next_sample:
                next_sample += 1.0
                for lane in range(args.lanes):
                    phase = now + lane
                    app.sink(events.GpuSampled(lane, GpuSample(
                        t=t0 + timedelta(seconds=now), gpu_index=lane, util_pct=90 + 9 * math.sin(phase),
                        mem_used_mb=44000 + 900 * math.sin(phase / 2), mem_total_mb=81559.0,
                        temp_c=66 + 5 * math.sin(phase / 3), power_w=560 + 90 * math.sin(phase))))
            time.sleep(max(0.0, start + step / args.rate - time.monotonic()))
        for name, (a, b) in (("", ("cpu", "keys")), ("keys_", ("keys", "end"))):
            (cpu0, feeder0, wall0), (cpu1, feeder1, wall1) = window[a], window[b]
            wall = wall1 - wall0
            result.update({f"{name}wall": wall, f"{name}process_pct": 100 * (cpu1 - cpu0) / wall,
                           f"{name}feeder_pct": 100 * (feeder1 - feeder0) / wall,
                           f"{name}app_pct": 100 * (cpu1 - cpu0 - (feeder1 - feeder0)) / wall})
        wall = window["keys"][2] - window["cpu"][2]
        result["threads_pct"] = {name: 100 * (threads["keys"].get(name, 0) - t) / wall
                                 for name, t in threads["cpu"].items()}
        result.update(events=step * args.lanes, curve_points=sum(len(v.curve) for v in app.view.lanes.values()),
                      commands=len(commands))
        Path(args.out).write_text(json.dumps(result))
        app.call_from_thread(app.exit)

    def start_feeding() -> None:
        threading.Thread(target=feed, name="feeder", daemon=True).start()

    app.call_after_refresh(start_feeding)
    if args.profile:
        import cProfile

        cProfile.runctx("app.run()", globals(), {"app": app}, args.profile)
    else:
        app.run()


# -- this process: the terminal ------------------------------------------------------------------

class Terminal:
    """A pseudo-terminal of a given size running the app; reads everything the app writes."""

    def __init__(self, argv, columns: int, rows: int):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor", "PYTHONPATH": str(ROOT)}
        env.pop("TEXTUAL", None)
        # textual draws on stderr: all three are the terminal.
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, cwd=ROOT)
        os.close(slave)
        self.buffer = bytearray()
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.5)
                if not ready:
                    if self.proc.poll() is not None:
                        return
                    continue
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self.cond:
                self.buffer += data
                self.cond.notify_all()

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait_for(self, marker: bytes, since: int, timeout: float) -> float | None:
        """The monotonic time the marker first appeared after byte `since`, or None."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while marker not in self.buffer[since:]:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return time.monotonic()

    def close(self) -> str:
        """Wait for the app to end; its last output (a traceback, if it failed)."""
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        os.close(self.master)
        return self.buffer[-4000:].decode(errors="replace")


def measure(size: str, args) -> dict:
    columns, rows = (int(v) for v in size.split("x"))
    out = Path(tempfile.mkdtemp(prefix="bench-tui-")) / "result.json"
    argv = [sys.executable, *os.environ.get("BENCH_TUI_WRAP", "").split(), str(Path(__file__).resolve()), "--child", "--lanes", str(args.lanes),
            "--rate", str(args.rate), "--seconds", str(args.seconds), "--key-seconds", str(args.key_seconds),
            "--out", str(out), *(["--profile", args.profile] if args.profile else [])]
    term = Terminal(argv, columns, rows)
    delays, missed = [], 0
    # Wait for the first frame, then for the warm-up, then press p every half second.
    if term.wait_for(b"sorted by", 0, 30) is None:
        raise SystemExit(f"the app never drew its first screen:\n{term.close()}")
    time.sleep(WARMUP_S + args.seconds + 0.2)  # the CPU window: nobody touches the keyboard
    deadline = time.monotonic() + args.key_seconds - 1.0
    expect = [b"pausing", b"resuming"]
    presses = 0
    intervals = random.Random(0)
    while time.monotonic() < deadline:
        with term.cond:
            since = len(term.buffer)
        marker = expect[presses % 2]
        sent = time.monotonic()
        term.write(b"p")
        seen = term.wait_for(marker, since, 2.0)
        presses += 1
        if seen is None:
            missed += 1
        else:
            delays.append((seen - sent) * 1000)
        time.sleep(max(0.0, sent + KEY_EVERY_S * intervals.uniform(0.5, 1.5) - time.monotonic()))
    errors = term.close()
    if not out.exists():
        raise SystemExit(f"the app did not report (exit {term.proc.returncode}):\n{errors[-3000:]}")
    result = json.loads(out.read_text())
    result.update(size=size, delays=delays, missed=missed)
    return result


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of the CPU window (after a 3 s warm-up)")
    ap.add_argument("--key-seconds", type=float, default=15.0, help="seconds of the key window that follows")
    ap.add_argument("--lanes", type=int, default=8)
    ap.add_argument("--rate", type=float, default=20.0, help="progress events per second per lane")
    ap.add_argument("--size", action="append", help="terminal COLSxROWS (repeatable; default 160x48 and 80x24)")
    ap.add_argument("--profile", metavar="FILE", help="cProfile the app's main thread into FILE (pstats)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    sizes = args.size or ["160x48", "80x24"]
    import textual

    print(f"machine : {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
          f"textual {textual.__version__}")
    print(f"load    : {args.lanes} lanes x {args.rate:g} progress events/s + 1 Hz GPU samples; CPU over "
          f"{args.seconds:g} s after a {WARMUP_S:g} s warm-up, then a key every {KEY_EVERY_S:g} s for "
          f"{args.key_seconds:g} s")
    results = []
    for size in sizes:
        print(f"\n[{size}]")
        r = measure(size, args)
        results.append(r)
        d = r["delays"]
        print(f"  app CPU        {r['app_pct']:.2f}% of a core (process {r['process_pct']:.2f}%, "
              f"feeder {r['feeder_pct']:.2f}%) over {r['wall']:.1f} s")
        print(f"  ... with keys  {r['keys_app_pct']:.2f}% of a core while a key is pressed every {KEY_EVERY_S:g} s")
        f = r["frames_ms"]
        if f:
            print(f"  screen updates {len(f) / r['wall']:.1f}/s, each median {statistics.median(f):.1f} ms, "
                  f"p95 {percentile(f, 0.95):.1f} ms, max {max(f):.1f} ms (CPU window)")
        print("  by thread      " + ", ".join(f"{name} {pct:.2f}%" for name, pct in
                                            sorted(r["threads_pct"].items(), key=lambda kv: -kv[1]) if pct > 0.005))
        print(f"  events fed     {r['events']:,} progress events; {r['curve_points']:,} loss points kept")
        if d:
            print(f"  key to screen  median {statistics.median(d):.1f} ms, p95 {percentile(d, 0.95):.1f} ms, "
                  f"max {max(d):.1f} ms over {len(d)} presses ({r['missed']} unanswered within 2 s)")
        else:
            print(f"  key to screen  no answer to any of {r['missed']} presses")

    def verdict(ok):
        return "PASS" if ok else "MISS"

    print("\n| figure | value | target | |\n| --- | --- | --- | --- |")
    for r in results:
        d = r["delays"]
        print(f"| app CPU per wall second, {r['size']} | {r['app_pct']:.2f}% of a core | < {TARGET_CPU_PCT:g}% | "
              f"{verdict(r['app_pct'] < TARGET_CPU_PCT)} |")
        if d:
            p95 = percentile(d, 0.95)
            print(f"| key to screen, median / p95 / max, {r['size']} | {statistics.median(d):.1f} / {p95:.1f} / "
                  f"{max(d):.1f} ms | < {TARGET_KEY_MS:g} ms | {verdict(p95 < TARGET_KEY_MS and not r['missed'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
