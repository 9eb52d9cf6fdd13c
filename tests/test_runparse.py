"""Reading a run's output as it arrives, in chunks that split lines anywhere."""

from scheduler.runs.runparse import RunParser, parse_progress, typed_summary

UPSTREAM = (
    "\rstep 00041 (13.7%) | loss: 3.912345 | lrm: 1.00 | dt: 318ms | tok/sec: 1,648,123 | mfu: 39.8% | epoch: 1 | "
    "remaining: 259s    "
    "\rstep 00042 (14.0%) | loss: 3.900001 | lrm: 0.95 | dt: 317ms | tok/sec: 1,650,000 | mfu: n/a | epoch: 1 | "
    "remaining: 258s    \n"
    "---\n"
    "val_bpb:          0.997900\n"
    "peak_vram_mb:     45060.2\n"
    "num_steps:        953\n"
    "mfu_percent:      n/a\n"
    "attention_backend: fa3\n"
    "my_new_metric:    7\n"
)


def test_upstream_output_parses_in_any_chunking():
    for size in (1, 7, 64, len(UPSTREAM)):
        parser = RunParser()
        points = []
        for i in range(0, len(UPSTREAM), size):
            points += parser.feed(UPSTREAM[i:i + size])
        points += parser.close()
        assert [p.step for p in points] == [41, 42]
        assert points[0].tok_per_sec == 1_648_123 and points[0].mfu == 39.8 and points[1].mfu is None
        assert points[1].lrm == 0.95 and points[1].remaining_s == 258
        summary, extra = typed_summary(parser.summary)
        assert summary == {"val_bpb": 0.9979, "peak_vram_mb": 45060.2, "num_steps": 953, "mfu_percent": None,
                           "attention_backend": "fa3"}
        assert extra == {"my_new_metric": "7"}  # unknown keys are kept, never rejected


def test_fail_and_out_of_memory_are_recognised():
    parser = RunParser()
    parser.feed("step 00001 (1.0%) | loss: nan\nFAIL\n")
    assert parser.failed and not parser.oom
    parser = RunParser()
    parser.feed("Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory. Tried to alloc")
    parser.close()
    assert parser.oom and parser.error_excerpt(1).startswith("torch.OutOfMemoryError")


def test_a_line_that_only_looks_like_progress_is_not_taken_for_it():
    assert parse_progress("loading step files") is None
    assert parse_progress("step 00003 (2.5%) | loss: 4.1").loss == 4.1  # a shorter line still counts


def test_events_encode_as_strict_json_even_with_a_nan_loss():
    import json
    from datetime import datetime

    from results.records import GpuSample
    from scheduler.engine import events

    point = parse_progress("step 00007 (3.0%) | loss: nan | lrm: 1.00")
    assert point.loss != point.loss  # parsed as NaN
    for event in (events.RunProgress(0, 5, point), events.GpuSampled(1, GpuSample(datetime(2026, 1, 1), 1, power_w=float("inf"))),
                  events.Notice("info", "hello")):
        body = json.loads(events.to_json(event), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        assert body["event"] == events.event_name(event)
    assert json.loads(events.to_json(events.RunProgress(0, 5, point)))["progress"]["loss"] is None
