"""Federated averaging over gRPC on loopback: a coordinator and 3 site processes (Dirichlet non-IID
partitions, so the sites hold different numbers of examples), 3 rounds. Every global model the
coordinator produced equals, to float precision, the example-weighted mean of the updates the
sites submitted in that round (weighted_mean_check.py, computed independently); a site with a
wrong token, and one training another model, are refused with a clear error. The coordinator
takes a free port (--listen 127.0.0.1:0); the results come from its summary.json and
metrics.jsonl, not from its log.

With `--pipeline.site clip --pipeline.clip_norm C` among the job flags, it also checks that every
update a site submitted lies within C (L2, all floating-point tensors together) of the global model
its round started from.

With `--privacy.secure_aggregation secagg+` (or secagg), every round must say it was a secure sum,
a site joining without secure aggregation is refused, and the weighted-mean check above holds too:
with 3 sites the quantization step (2 c / floor((2^32 - 1) / 3)) is far below float precision.

Usage: federated_test.py COORDINATOR WORKER [JOB FLAGS...]  (e.g. --strategy.name fedprox ...)"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
from allround_harness import Checks, Run, read_json, read_metrics, skip, start_coordinator  # noqa: E402

COORD, WORKER, EXTRA = sys.argv[1], sys.argv[2], sys.argv[3:]
DATA = "/usr/share/datasets/fashion-mnist"
PY = os.path.join(os.environ.get("ALLROUND_VENV", "/opt/allround-venv"), "bin", "python3")
if not os.path.isdir(DATA):
    skip(f"no {DATA}")

JOB = ["--data.train_limit", "3000", "--data.test_limit", "500", "--threads", "1", "--federated.rounds", "3",
       "--federated.min_sites", "3", "--federated.min_available", "3", "--partition.scheme", "dirichlet",
       "--partition.sites", "3", "--partition.beta", "0.5", "--train.progress_every_s", "0",
       "--checkpoint.enabled", "false", *EXTRA]
checks = Checks()
with Run("federated") as run:
    os.makedirs(run.path("models"))
    os.makedirs(run.path("updates"))
    with open(run.path("tokens"), "w") as f:
        f.write("a tokA\nb tokB\nc tokC\n")
    os.chmod(run.path("tokens"), 0o600)
    coord, port = start_coordinator(run, COORD, [*JOB, "--tokens", run.path("tokens"), "--insecure",
                                                 "--dump-models", run.path("models"), "--run_dir", run.path("run"),
                                                 "--summary-json", run.path("summary.json")])
    site_flags = [*JOB, "--coordinator", f"127.0.0.1:{port}", "--insecure"]

    # Before the real sites start: the coordinator cannot finish without them.
    bad = run.start("mallory", [WORKER, *site_flags, "--site", "mallory", "--token", "guess", "--site-index", "0"])
    rc = bad.wait(120)
    checks.check("a site with a wrong token is refused with a clear error",
                 rc not in (0, None) and "site 'mallory': unknown site or bad token" in bad.err(), bad.err_tail())
    mlp = run.start("mlp", [WORKER, *site_flags, "--site", "a", "--token", "tokA", "--site-index", "0",
                            "--model.name", "mlp"])
    rc = mlp.wait(120)
    checks.check("a site training another model than the job's is refused at Join, naming the difference",
                 rc not in (0, None) and "site 'a' trains another model than the job's: 6 tensors at the site" in mlp.err(),
                 mlp.err_tail())

    secure = "--privacy.secure_aggregation" in EXTRA
    if secure:
        plain_flags = [f for f in site_flags]
        i = plain_flags.index("--privacy.secure_aggregation")
        plain_flags[i + 1] = "none"
        plain = run.start("plain", [WORKER, *plain_flags, "--site", "a", "--token", "tokA", "--site-index", "0"])
        rc = plain.wait(120)
        checks.check("a site without secure aggregation is refused at Join, naming the key",
                     rc not in (0, None) and "has privacy.secure_aggregation none, the job's is" in plain.err(),
                     plain.err_tail())

    sites = [run.start(f"site-{s}", [WORKER, *site_flags, "--site", s, "--token", f"tok{s.upper()}",
                                     "--site-index", str(i), "--dump-updates", run.path("updates")])
             for i, s in enumerate("abc")]
    rc = coord.wait(300)
    print(coord.out(), end="")
    summary = read_json(run.path("summary.json")) if os.path.exists(run.path("summary.json")) else {}
    checks.check("the coordinator finished 3 rounds", rc == 0 and summary.get("rounds") == 3,
                 f"exit {rc}, summary {summary}\n{coord.err_tail()}")
    records = read_metrics(run.path("run")) if os.path.exists(run.path("run", "metrics.jsonl")) else []
    checks.check("metrics.jsonl has one record per round, each from the 3 sites",
                 [r.get("round") for r in records] == [1, 2, 3]
                 and all(sorted(r.get("site_names", [])) == ["a", "b", "c"] for r in records),
                 str(records)[:400])
    if secure:
        checks.check("every round was aggregated as a secure sum", records and all(r.get("secure") for r in records),
                     str(records)[:400])
    codes = [s.wait(60) for s in sites]
    checks.check("every site was told to stop and exited 0",
                 codes == [0, 0, 0] and all("coordinator says stop" in s.err() for s in sites), f"exit codes {codes}")
    # What bench/secagg reads: each site's protocol bytes both ways, and the coordinator's CPU seconds.
    traffic = [re.search(r"traffic: sent (\d+) bytes, received (\d+) bytes", s.err()) for s in sites]
    checks.check("every site logged the bytes it sent and received",
                 all(t and int(t.group(1)) > 0 and int(t.group(2)) > 0 for t in traffic), str([t and t.groups() for t in traffic]))
    checks.check("the summary gives the coordinator's CPU seconds", summary.get("cpu_s", 0) > 0, str(summary))
    mean = subprocess.run([PY, os.path.join(os.path.dirname(os.path.abspath(__file__)), "weighted_mean_check.py"),
                           run.dir, "3", "3", "--non-iid"], capture_output=True, text=True)
    print(mean.stdout, end="")
    checks.check("each global model is the example-weighted mean of its round's submitted updates",
                 mean.returncode == 0, mean.stderr[-400:])
    if "--pipeline.site" in EXTRA and "clip" in EXTRA[EXTRA.index("--pipeline.site") + 1]:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import glob
        import numpy as np
        from safetensors_np import load_file
        bound = float(EXTRA[EXTRA.index("--pipeline.clip_norm") + 1])
        norms = []
        for r in range(3):
            start = run.path("models", f"version-{r}.safetensors")
            if not os.path.exists(start):
                continue  # the initial model is not dumped
            model = load_file(start)
            for f in sorted(glob.glob(run.path("updates", f"round-{r}-site-*.safetensors"))):
                update = load_file(f)
                norms.append(float(np.sqrt(sum(np.sum((update[k].astype(np.float64) - model[k]) ** 2)
                                               for k in update if update[k].dtype.kind == "f"))))
        print(f"clip: {len(norms)} updates, largest distance from their round's start {max(norms or [0]):.6f} "
              f"(clip_norm {bound})")
        checks.check("every submitted update lies within pipeline.clip_norm of its round's start",
                     len(norms) >= 6 and all(n <= bound * (1 + 1e-4) for n in norms)
                     and max(norms) >= bound * 0.999, f"norms {norms}")
sys.exit(checks.exit_code())
