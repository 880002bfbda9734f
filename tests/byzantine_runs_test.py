"""Simulated Byzantine sites (attack.*) through allround-coordinator and allround-worker on loopback:
4 sites hosted by one worker process.

1. label_flip with 1 attacker: every round's record names the attack and the same one attacker,
   the one the job seed draws, and only that site's log says it trained on flipped labels;
2. scaling x1000 by 1 attacker under centered_clipping with the coordinator's norm_bound step:
   the run finishes with its rounds naming the attacker, and a rerun with the same seed ends with
   the very same figures (the attack is seeded, the aggregation in name order);
3. a site whose own job does not name the attack refuses the coordinator's order to flip its labels,
   and the round closes at its deadline with the honest site alone;
4. attacks that cannot work are refused before anything starts: the coordinator-side ones under
   secure aggregation, an attack without attackers, label_flip in a mode without labels.

Usage: byzantine_runs_test.py WORKER COORDINATOR"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "harness"))
from allround_harness import Checks, Run, read_metrics, skip, start_coordinator  # noqa: E402

WORKER, COORD = sys.argv[1], sys.argv[2]
DATA = "/usr/share/datasets/fashion-mnist"
if not os.path.isdir(DATA):
    skip(f"no {DATA}")
SITES = 4
JOB = ["--data.train_limit", "800", "--data.test_limit", "200", "--threads", "1", "--train.progress_every_s", "0",
       "--model.name", "simple_cnn", "--tensorboard.enabled", "false", "--optimizer.lr", "0.05", "--seed", "3",
       "--train.batch_size", "32", "--partition.sites", str(SITES), "--federated.rounds", "3",
       "--federated.min_available", str(SITES), "--federated.min_sites", str(SITES), "--checkpoint.enabled", "false",
       "--federated.site_eval_fraction", "0"]
checks = Checks()


def federated(run, name, job, site_job=None, sites=SITES, timeout=300):
    """A coordinator and one worker hosting `sites` sites: (coordinator rc, its records, the worker's stderr)."""
    coord, port = start_coordinator(run, COORD, [*job, "--no-auth", "--insecure", "--run_dir", run.path(name)],
                                    name=name)
    worker = run.start(f"{name}.sites", [WORKER, *(site_job or job), "--coordinator", f"127.0.0.1:{port}",
                                         "--insecure", "--site", "s", "--site-index", f"0-{sites - 1}",
                                         "--site-threads", "2", "--run_dir", run.path(f"{name}.sites")])
    rc = coord.wait(timeout)
    worker.wait(120)
    records = read_metrics(run.path(name)) if os.path.exists(run.path(name, "metrics.jsonl")) else []
    if rc != 0:
        print(coord.err_tail(20), file=sys.stderr)
    return rc, records, worker.err()


with Run("byzantine_runs") as run:
    # 1. Label flipping: who attacks, and that only the attacker trains on flipped labels.
    rc, records, log = federated(run, "flip", [*JOB, "--attack.kind", "label_flip", "--attack.sites", "1"])
    named = [tuple(r.get("attackers", [])) for r in records]
    checks.check("label_flip: the run finishes, each round naming the attack and one attacker, the same",
                 rc == 0 and len(records) == 3 and all(r.get("attack") == "label_flip" for r in records)
                 and len(set(named)) == 1 and len(named[0]) == 1, str(named))
    if named and named[0]:
        attacker = named[0][0]
        flipped = {m.group(1) for m in re.finditer(r"site (\S+) attacks \(simulation\)", log)}
        checks.check("only the attacker's log says it trained on flipped labels, every round",
                     flipped == {attacker} and log.count("training on flipped labels") == 3, f"{flipped} vs {attacker}")

    # 2. A scaled attacker against centered clipping and the coordinator's norm bound, run twice.
    job = [*JOB, "--attack.kind", "scaling", "--attack.scale", "1000", "--attack.sites", "1", "--strategy.name",
           "centered_clipping", "--pipeline.coordinator", "norm_bound", "--pipeline.norm_bound", "5"]
    finals = []
    for i in range(2):
        rc, records, _ = federated(run, f"scaled{i}", job)
        checks.check(f"scaling x1000 under centered_clipping + norm_bound finishes (run {i + 1})",
                     rc == 0 and len(records) == 3 and all(len(r.get("attackers", [])) == 1 for r in records),
                     str([r.get("attackers") for r in records]))
        if records:
            finals.append((records[-1].get("test_accuracy"), records[-1].get("test_loss")))
    checks.check("a rerun with the same seed ends with the same accuracy and loss, exactly",
                 len(finals) == 2 and finals[0] == finals[1] and finals[0][1] is not None
                 and finals[0][1] == finals[0][1], str(finals))
    checks.check("the global model stays sane (test loss finite and below 10)",
                 bool(finals) and finals[0][1] is not None and finals[0][1] < 10, str(finals))

    # 3. A site whose own job has no attack refuses to flip its labels.
    two = [a if a != str(SITES) else "2" for a in JOB]
    coord_job = [*two, "--attack.kind", "label_flip", "--attack.sites", "1", "--federated.rounds", "1",
                 "--federated.min_sites", "1", "--federated.round_timeout_s", "8"]
    rc, records, log = federated(run, "refuse", coord_job, site_job=[*two, "--federated.rounds", "1"], sites=2)
    checks.check("a site without the attack in its job refuses to flip its labels, saying why",
                 "does not set attack.kind: label_flip" in log, log[-2000:])
    checks.check("the round closes at its deadline with the honest site alone",
                 rc == 0 and len(records) == 1 and records[0]["closed_by_deadline"] and len(records[0]["sites"]) == 1
                 and records[0]["attackers"] == [], str(records))

    # 4. Refused when the job is read.
    for label, extra, says in [
        ("alie under secure aggregation", ["--attack.kind", "alie", "--attack.sites", "1",
                                          "--privacy.secure_aggregation", "secagg+"], "secure"),
        ("an attack without attackers", ["--attack.kind", "gaussian"], "attack.sites"),
        ("label_flip in a mode without labels", ["--attack.kind", "label_flip", "--attack.sites", "1", "--mode", "vae"],
         "label_flip"),
    ]:
        p = run.start("refused", [COORD, *JOB, *extra, "--no-auth", "--insecure", "--listen", "127.0.0.1:0",
                                  "--run_dir", run.path("refused")])
        rc = p.wait(60)
        checks.check(f"refused at start: {label}", rc not in (0, None) and says in p.err(), p.err_tail())

sys.exit(checks.exit_code())
