"""Secure aggregation with sites SIGKILLed mid-round: a real coordinator and 10 site processes on
loopback, SecAgg+ with t = 6 (the complete graph for 10 sites), one round per scenario. A site is
killed before its keys (it joined, counts as alive, and never advertises), after its shares (it
is training: its pairwise masks must be removed from its neighbours' shares of its key), or after
its masked input (its input counts; its self mask is rebuilt from the others' shares, and it
sends no shares itself):

  A: 2 before keys, 2 after shares      -> the round completes with the 6 survivors' sum
  B: 4 after the masked input           -> the round completes with all 10 sites' sum
  C: 4 before keys, 1 after shares      -> 5 masked inputs < t: abandoned with the reason
  D: 4 after shares                     -> exactly t survivors: the 6 survivors' sum
  E: 2 after the masked input           -> all 10 sites' sum
  F: none                               -> all 10 sites' sum
so that 0, 2 and 4 sites die at each stage (with the abandoned round where fewer than t remain).

"The right sum" is checked against the sites' own dumped updates: the new global model is their
example-weighted mean over exactly the counted sites, to 1e-6. A kill decided on a site's log line
might land after the site went one step further; the test reads every killed site's log and says
so rather than pass on a different scenario.

Usage: secagg_kill_test.py COORDINATOR WORKER"""
import glob
import os
import re
import signal
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from allround_harness import Checks, Run, read_json, read_metrics, skip, start_coordinator  # noqa: E402
from safetensors_np import load_file, metadata  # noqa: E402

COORD, WORKER = sys.argv[1], sys.argv[2]
DATA = "/usr/share/datasets/fashion-mnist"
if not os.path.isdir(DATA):
    skip(f"no {DATA}")
SITES, T = 10, 6
JOB = ["--data.train_limit", "3000", "--data.test_limit", "200", "--threads", "1", "--federated.rounds", "1", "--federated.local_epochs", "5",
       "--federated.min_sites", str(T), "--federated.min_available", str(SITES), "--partition.sites", str(SITES),
       "--federated.round_timeout_s", "40", "--federated.site_eval_fraction", "0", "--train.progress_every_s", "0",
       "--checkpoint.enabled", "false", "--privacy.secure_aggregation", "secagg+", "--privacy.secagg.threshold",
       str(T), "--privacy.secagg.stage_timeout_s", "5"]
# A site logs this once its shares went out and the masked-input task came: it then fetches the
# model and trains for seconds (local_epochs 5) before its masked input leaves.
AFTER_SHARES = r"round 0: training model version 0"
AFTER_MASKED = r"round 0 masked input accepted"
checks = Checks()


def kill_on_line(sites, which, pattern, timeout=120):
    """SIGKILLs each of `which` as soon as `pattern` shows in its log, watching all of them at once
    (so one site's kill never waits on another's); returns those killed."""
    regex, waiting, killed = re.compile(pattern), set(which), []
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for i in sorted(waiting):
            if regex.search(sites[i].err()) or sites[i].poll() is not None:
                sites[i].kill()
                waiting.discard(i)
                killed.append(i)
        time.sleep(0.02)
    return killed


def scenario(label, before_keys, after_shares, after_masked, expect_counted):
    """Runs one round; kills sites as told; returns nothing, recording checks."""
    with Run(f"secagg-kill-{label}") as run:
        os.makedirs(run.path("models"))
        os.makedirs(run.path("updates"))
        coord, port = start_coordinator(run, COORD, [*JOB, "--no-auth", "--insecure", "--dump-models",
                                                     run.path("models"), "--run_dir", run.path("run"),
                                                     "--summary-json", run.path("summary.json")])
        flags = [*JOB, "--coordinator", f"127.0.0.1:{port}", "--insecure", "--dump-updates", run.path("updates"),
                 "--give-up-s", "20"]
        sites = {}

        def start(i):
            sites[i] = run.start(f"s{i}", [WORKER, *flags, "--site", f"s{i}", "--site-index", str(i)])

        for i in range(SITES - 1):
            start(i)
        # Before keys: joined (alive for federated.site_timeout_s) and killed before the round opens,
        # which it does when the last site joins.
        for i in range(SITES - 1):
            if not coord.wait_for(rf"site 's{i}' joined", 120):
                checks.check(f"{label}: site s{i} joined", False, coord.err_tail())
                return
        for i in before_keys:
            sites[i].kill()
        start(SITES - 1)
        killed_late = [i for i in kill_on_line(sites, after_shares, AFTER_SHARES)
                       if "masked input accepted" in sites[i].err()]
        kill_on_line(sites, after_masked, AFTER_MASKED)
        checks.check(f"{label}: every site killed after its shares was killed before its masked input went out",
                     not killed_late, f"late: {killed_late}")
        if expect_counted is None:
            m = coord.wait_for(r"abandoned \(10 sites sampled\): (.*)", 150)
            checks.check(f"{label}: the round is abandoned, the reason naming the threshold",
                         m is not None and "below the threshold 6" in m.group(1),
                         m.group(1) if m else coord.err_tail())
            checks.check(f"{label}: no model came out of it",
                         not os.path.exists(run.path("models", "version-1.safetensors")))
            coord.signal(signal.SIGTERM)
            coord.wait(30)
            return
        rc = coord.wait(200)
        summary = read_json(run.path("summary.json")) if os.path.exists(run.path("summary.json")) else {}
        records = read_metrics(run.path("run")) if os.path.exists(run.path("run", "metrics.jsonl")) else []
        checks.check(f"{label}: the coordinator finished its round", rc == 0 and summary.get("rounds") == 1,
                     f"exit {rc}, summary {summary}\n{coord.err_tail()}")
        if not records:
            return
        names = sorted(records[0].get("site_names", []))
        want = sorted(f"s{i}" for i in expect_counted)
        checks.check(f"{label}: the round counted exactly {len(want)} sites {want}", names == want and
                     records[0].get("secure"), f"counted {names}")
        # The new global model is the weighted mean of exactly the counted sites' updates.
        files = [run.path("updates", f"round-0-site-{n}.safetensors") for n in names]
        if not all(os.path.exists(f) for f in files):
            checks.check(f"{label}: every counted site dumped its update", False, str(glob.glob(run.path("updates", "*"))))
            return
        counts = [int(metadata(f)["examples"]) for f in files]
        updates = [load_file(f) for f in files]
        model = load_file(run.path("models", "version-1.safetensors"))
        worst = 0.0
        for name, g in model.items():
            if not np.issubdtype(g.dtype, np.floating):
                continue
            mean = sum(u[name].astype(np.float64) * n for u, n in zip(updates, counts)) / sum(counts)
            worst = max(worst, float(np.abs(g.astype(np.float64) - mean).max(initial=0.0)))
        print(f"{label}: counted {names}, {sum(counts)} examples; max |global - weighted mean| = {worst:.2e}")
        checks.check(f"{label}: the global model is the counted sites' weighted mean to 1e-6", worst < 1e-6, str(worst))
        checks.check(f"{label}: the coordinator learnt the counted sites' total examples",
                     records[0].get("examples") == sum(counts), f"{records[0].get('examples')} vs {sum(counts)}")


scenario("A", before_keys=[0, 1], after_shares=[2, 3], after_masked=[], expect_counted=range(4, 10))
scenario("B", before_keys=[], after_shares=[], after_masked=[0, 1, 2, 3], expect_counted=range(10))
scenario("C", before_keys=[0, 1, 2, 3], after_shares=[4], after_masked=[], expect_counted=None)
scenario("D", before_keys=[], after_shares=[0, 1, 2, 3], after_masked=[], expect_counted=range(4, 10))
scenario("E", before_keys=[], after_shares=[], after_masked=[8, 9], expect_counted=range(10))
scenario("F", before_keys=[], after_shares=[], after_masked=[], expect_counted=range(10))
sys.exit(checks.exit_code())
