"""A supervisor stand-in for the store tests: writes experiments to a Store in its own process
and says on stdout what it has committed. Usage: store_writer.py DB COUNT HOLD_SECONDS"""

import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from results.records import Experiment, MetricPoint, Run, Status  # noqa: E402
from results.store import Store, utcnow  # noqa: E402

db, count, hold = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
store = Store(db, flush_seconds=0.05)
store.start_run(Run(id="run-1", tag="night", repo="/repo", started_at=utcnow()))
for i in range(count):
    exp = store.add_experiment(Experiment(run_id="run-1", lane=i % 2, description=f"experiment number {i}",
                                          status=Status.RUNNING, gpu_name="cpu"))
    for step in range(50):
        store.add_metric(MetricPoint(experiment_id=exp.id, step=step, t=utcnow(), loss=4.0 - step / 50))
    store.save_experiment(replace(exp, status=Status.OK, summary={"val_bpb": 1.0 - i / 1000},
                                  commit=f"{i:07x}", finished_at=utcnow()))
    print(f"committed {exp.id}", flush=True)
store.refresh_snapshot()  # snapshots are taken in the background; publish the last one now
print("holding", flush=True)
time.sleep(hold)
store.close()
