"""The worker's own Prometheus metrics (allround-worker --metrics-listen, rank 0), parsed by the
Prometheus project's parser (python3-prometheus-client), against what the run wrote for machines:

1. one process, 2 epochs with a checkpoint after each: steps and examples equal summary.json's,
   a step-time observation per step, a checkpoint-time observation per save, the epoch and the
   last epoch's samples/s equal metrics.jsonl's; no allreduce (a world of one has no Reducer);
2. a 2-rank mpirun group: an allreduce wait per step on rank 0, and exactly steps x the model's
   gradient bytes (its parameters x 4) allreduced;
3. beyond loopback without --status-token the worker refuses to start.
The runs keep serving after their end (--metrics-linger-s) for the scrape, then get SIGTERM.

Usage: worker_metrics_test.py WORKER  (the venv's python3)"""
import os
import shutil
import sys
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
from allround_harness import Checks, Run, read_json, read_metrics, skip  # noqa: E402

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    skip(f"no prometheus_client ({e})")

WORKER = sys.argv[1]
DATA = "/usr/share/datasets/fashion-mnist"
if not os.path.isdir(DATA):
    skip(f"no {DATA}")
JOB = ["--data.train_limit", "1024", "--data.test_limit", "200", "--threads", "1", "--train.progress_every_s", "0",
       "--model.name", "mlp", "--model.hidden", "64", "--train.epochs", "2", "--train.batch_size", "64",
       "--tensorboard.enabled", "false", "--metrics-listen", "127.0.0.1:0", "--metrics-linger-s", "600"]
checks = Checks()


def scrape(proc, run_dir):
    """The metrics once the run is over and lingers: {(name, labels): value}."""
    m = proc.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", 120)
    if m is None or proc.wait_for(r"metrics stay up", 300) is None:
        return None
    with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = s.value
    return out


with Run("worker-metrics") as run:
    p = run.start("open", [WORKER, *JOB[:-4], "--metrics-listen", "0.0.0.0:0", "--run_dir", run.path("open")])
    checks.check("metrics beyond loopback without a token: the worker refuses to start",
                 p.wait(60) not in (0, None) and "give --status-token" in p.err(), p.err_tail())

    run_dir = run.path("one")
    p = run.start("one", [WORKER, *JOB, "--checkpoint.every_rounds", "1", "--run_dir", run_dir])
    m = scrape(p, run_dir)
    checks.check("the single-process run served its metrics after its end", m is not None, p.err_tail())
    if m is not None:
        summary = read_json(os.path.join(run_dir, "summary.json"))
        records = read_metrics(run_dir)
        checks.check("steps, examples and step-time observations equal summary.json's",
                     m["allround_worker_steps_total"] == summary["steps"] == m["allround_worker_step_seconds_count"]
                     and m["allround_worker_examples_total"] == summary["examples"],
                     f"{m} {summary['steps']} {summary['examples']}")
        saves = p.err().count("checkpoint ")  # "checkpoint <id> saved (round r, step s)"
        checks.check("a checkpoint-time observation per save (2 epochs, one after each)",
                     m["allround_worker_checkpoint_seconds_count"] == 2 and saves >= 2, f"{m} {saves}")
        checks.check("the epoch and the last epoch's samples/s are metrics.jsonl's",
                     m["allround_worker_epoch"] == 2 and
                     abs(m["allround_worker_samples_per_second"] - records[-1]["samples_per_s"]) < 1e-6 *
                     records[-1]["samples_per_s"], str(records[-1]))
        checks.check("a world of one allreduces nothing", m.get("allround_worker_allreduce_seconds_count", 0) == 0)
    p.signal(15)
    checks.check("SIGTERM ends the lingering worker cleanly", p.wait(60) == 0, p.err_tail())

    if shutil.which("mpirun"):
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
        run_dir = run.path("two")
        p = run.start("two", ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none", WORKER, *JOB,
                              "--comm.backend", "mpi", "--checkpoint.enabled", "false", "--run_dir", run_dir], env=env)
        m = scrape(p, run_dir)
        checks.check("the 2-rank group's rank 0 served its metrics", m is not None, p.err_tail())
        if m is not None:
            summary = read_json(os.path.join(run_dir, "summary.json"))
            gradient_bytes = 4 * summary["parameters"]
            checks.check("an allreduce wait per step, and steps x the model's gradient bytes allreduced",
                         m["allround_worker_allreduce_seconds_count"] == summary["steps"] and
                         m["allround_worker_allreduce_bytes_total"] == summary["steps"] * gradient_bytes,
                         f"{m} steps {summary['steps']} bytes/step {gradient_bytes}")
        p.kill()
    else:
        print("no mpirun: the 2-rank part was skipped")

sys.exit(checks.exit_code())
