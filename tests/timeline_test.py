"""The step timeline (--timeline FILE), read as Chrome trace-event JSON:

1. a 2-rank mpirun run (an MLP whose gradients fill several Reducer buckets): each rank's file
   parses as JSON with a traceEvents list of complete events ("ph" "X": name, cat, ts, dur, pid,
   tid), pid = rank; each step has forward, backward and optimizer spans in order, the allreduce
   of each bucket, and the final checkpoint save; in every step the first buckets' allreduce spans
   start before that step's backward ends (they overlap it, as the Reducer launches them from the
   gradient hooks), and end after it;
2. a federated run (a coordinator and 2 sites, 2 rounds): each site's file has fetch, train and
   submit for each round, in that order; the coordinator's has an aggregation and an evaluation
   per round.

Usage: timeline_test.py COORDINATOR WORKER"""
import json
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
from allround_harness import Checks, Run, skip, start_coordinator  # noqa: E402

COORD, WORKER = sys.argv[1], sys.argv[2]
DATA = "/usr/share/datasets/fashion-mnist"
if not os.path.isdir(DATA):
    skip(f"no {DATA}")
BASE = ["--data.train_limit", "1024", "--data.test_limit", "200", "--threads", "1", "--train.progress_every_s", "0",
        "--model.name", "mlp", "--model.hidden", "256,256", "--tensorboard.enabled", "false"]
checks = Checks()


def load(path):
    """The trace's complete events, after checking the trace-event format; raises on a bad file."""
    with open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"]
    meta = [e for e in events if e.get("ph") == "M"]
    spans = [e for e in events if e.get("ph") == "X"]
    assert len(meta) + len(spans) == len(events), "only metadata and complete events"
    for e in spans:
        assert isinstance(e["name"], str) and isinstance(e["cat"], str), e
        assert all(isinstance(e[k], int) and e[k] >= 0 for k in ("ts", "dur", "pid", "tid")), e
    return spans


with Run("timeline") as run:
    if shutil.which("mpirun"):
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
        trace = run.path("cluster.json")
        p = run.start("cluster", ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none", WORKER, *BASE,
                                  "--train.epochs", "1", "--train.batch_size", "64", "--comm.backend", "mpi",
                                  "--comm.first_bucket_mb", "0.05", "--comm.bucket_mb", "0.2",
                                  "--run_dir", run.path("run"), "--timeline", trace], env=env)
        rc = p.wait(300)
        checks.check("the 2-rank run finished", rc == 0, p.err_tail())
        for rank, path in ((0, trace), (1, trace + ".rank1")):
            try:
                spans = load(path)
                problem = ""
            except (OSError, ValueError, KeyError, AssertionError) as e:
                spans, problem = [], repr(e)
            checks.check(f"rank {rank}'s timeline is valid trace-event JSON with pid {rank}",
                         spans and not problem and all(e["pid"] == rank for e in spans), problem)
            names = [e["name"] for e in spans]
            buckets = sorted({n for n in names if n.startswith("allreduce bucket")})
            steps = names.count("backward")
            # 1024 examples over 2 ranks in batches of 64: 8 steps each.
            checks.check(f"rank {rank}: a forward, backward and optimizer span per step (8 steps), several buckets",
                         steps == 8 and names.count("forward") == 8 and names.count("optimizer") == 8 and
                         len(buckets) >= 3, f"{steps} steps, buckets {buckets}")
            if rank == 0:
                checks.check("rank 0 saved its checkpoint inside the timeline", "checkpoint save" in names)
            # Each step, in order: forward ends where backward starts; the buckets launched from
            # the gradient hooks start inside the backward and end after it.
            backward = sorted((e["ts"], e["ts"] + e["dur"]) for e in spans if e["name"] == "backward")
            forward = sorted((e["ts"], e["ts"] + e["dur"]) for e in spans if e["name"] == "forward")
            optimizer = sorted(e["ts"] for e in spans if e["name"] == "optimizer")
            ordered = all(f[1] <= b[0] <= b[1] <= o for f, b, o in zip(forward, backward, optimizer))
            checks.check(f"rank {rank}: forward, then backward, then the optimizer, in every step", ordered)
            reduces = [(e["ts"], e["ts"] + e["dur"]) for e in spans if e["name"].startswith("allreduce bucket")]
            overlapping = 0
            for start, end in backward:
                inside = [r for r in reduces if start <= r[0] < end and r[1] >= end]
                overlapping += 1 if inside else 0
            checks.check(f"rank {rank}: in every step, allreduce spans start before the backward ends and end after it",
                         overlapping == len(backward) == 8, f"{overlapping} of {len(backward)} steps")
    else:
        print("no mpirun: the 2-rank run was skipped")

    # A federated run.
    fed = [*BASE, "--federated.rounds", "2", "--federated.min_sites", "2", "--federated.min_available", "2",
           "--partition.sites", "2", "--checkpoint.enabled", "false"]
    coord, port = start_coordinator(run, COORD, [*fed, "--no-auth", "--insecure", "--run_dir", run.path("fed"),
                                                 "--timeline", run.path("coordinator.json")])
    sites = [run.start(f"s{i}", [WORKER, *fed, "--coordinator", f"127.0.0.1:{port}", "--insecure", "--site", f"s{i}",
                                 "--site-index", str(i), "--timeline", run.path(f"site{i}.json")]) for i in range(2)]
    rc = coord.wait(300)
    checks.check("the federated run finished", rc == 0 and all(s.wait(60) == 0 for s in sites), coord.err_tail())
    if rc == 0:
        for i in range(2):
            spans = load(run.path(f"site{i}.json"))
            ok = True
            for r in range(2):
                phases = [next((e for e in spans if e["name"] == f"{what} (site s{i}, round {r})"), None)
                          for what in ("fetch", "train", "submit")]
                ok &= all(phases) and all(a["ts"] + a["dur"] <= b["ts"] for a, b in zip(phases, phases[1:]))
            checks.check(f"site s{i}'s timeline: fetch, train and submit in each round, in order", ok,
                         str([e["name"] for e in spans]))
        spans = load(run.path("coordinator.json"))
        names = [e["name"] for e in spans]
        checks.check("the coordinator's timeline: an aggregation and an evaluation per round",
                     names.count("aggregate") == 2 and names.count("evaluate") >= 2, str(names))

sys.exit(checks.exit_code())
