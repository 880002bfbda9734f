"""Example-level DP-SGD (privacy.mode example) through allround-worker, as a user runs it:

1. `mpirun -np 2` with batches of 32 per rank ends at the same model as one process with batches
   of 64 and the same seed (the same Poisson-sampled group batch, the noise drawn once per step),
   to 1e-6, and both report the same epsilon (draws from the job seed: privacy.noise_seed job);
2. the epsilon in metrics.jsonl (every epoch), summary.json and the checkpoint (`allround-ckpt
   show`) is Google dp_accounting's for the run's rate, noise and steps (when the venv has it);
3. privacy.target_epsilon with a given noise: the run stops at the last step within the budget,
   saying so (one more step would pass it);
4. privacy.target_epsilon alone: the noise is computed before training so that the whole run
   spends the budget;
5. a run stopped after its first epoch and resumed ends bit-for-bit at the uninterrupted run's model and
   epsilon (the accountant is in the checkpoint).

6. DP-SGD at federated sites: each site counts its own spend over the rounds it trains, and the
   coordinator's round records carry the largest (site_epsilon_max), growing round by round; sites
   started again carry on from their privacy ledgers (RUN_DIR/site-privacy/<site>.json).

Usage: privacy_dp_sgd_test.py WORKER CKPT COORDINATOR [VENV_PYTHON]"""
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "harness"))
sys.path.insert(0, HERE)
from allround_harness import (Checks, Run, dp_accounting_epsilon, export_latest_checkpoint, read_json,  # noqa: E402
                              read_metrics, skip, start_coordinator)
import safetensors_np  # noqa: E402

WORKER, CKPT, COORD = sys.argv[1], sys.argv[2], sys.argv[3]
VENV = sys.argv[4] if len(sys.argv) > 4 else ""
DATA = "/usr/share/datasets/fashion-mnist"
if not os.path.isdir(DATA):
    skip(f"no {DATA}")
N = 1024
BASE = ["--data.train_limit", str(N), "--data.test_limit", "200", "--threads", "1", "--train.progress_every_s", "0",
        "--model.name", "tanh_cnn", "--tensorboard.enabled", "false", "--optimizer.lr", "0.5",
        "--privacy.mode", "example", "--privacy.clip", "0.5", "--seed", "11"]
checks = Checks()


def worker(run, name, args, mpi=0, timeout=600):
    argv = [WORKER, *BASE, "--run_dir", run.path(name), *args]
    env = None
    if mpi:
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
        argv = ["mpirun", "-np", str(mpi), "--oversubscribe", "--bind-to", "none", *argv, "--comm.backend", "mpi"]
    p = run.start(name, argv, env=env)
    rc = p.wait(timeout)
    return p, rc


def latest_model(run, name):
    """The run's latest checkpoint: its model tensors (numpy), all its tensors and `allround-ckpt show`'s text."""
    out = run.path(name + ".safetensors")
    show = export_latest_checkpoint(CKPT, run.path(name, "checkpoints"), out)
    tensors = safetensors_np.load_file(out)
    return {k: v for k, v in tensors.items() if k.startswith("model/")}, tensors, show


def max_diff(a, b):
    if a.keys() != b.keys():
        return float("inf")
    return max(float(abs(a[k].astype("f8") - b[k].astype("f8")).max()) for k in a)


def reference_epsilon(q, noise, steps, delta):
    return dp_accounting_epsilon(VENV, q, noise, steps, delta)


with Run("privacy") as run:
    # 1. Two ranks against one process.
    if shutil.which("mpirun"):
        # The draws from the job seed (privacy.noise_seed: job): the default secret differs run by run.
        common = ["--privacy.noise_multiplier", "1.1", "--train.max_steps", "3", "--train.epochs", "1",
                  "--privacy.noise_seed", "job"]
        one, rc1 = worker(run, "one", [*common, "--train.batch_size", "64"])
        two, rc2 = worker(run, "two", [*common, "--train.batch_size", "32"], mpi=2)
        checks.check("one process and 2 ranks finish", rc1 == 0 and rc2 == 0, one.err_tail() + two.err_tail())
        if rc1 == 0 and rc2 == 0:
            m1, _, _ = latest_model(run, "one")
            m2, _, _ = latest_model(run, "two")
            d = max_diff(m1, m2)
            checks.check("the 2-rank DP-SGD model equals the one-process model to 1e-6 after 3 steps", d <= 1e-6,
                         f"max difference {d}")
            s1, s2 = read_json(run.path("one", "summary.json")), read_json(run.path("two", "summary.json"))
            checks.check("both report the same epsilon and sampling rate 64/1024",
                         s1["privacy"]["epsilon"] == s2["privacy"]["epsilon"] and
                         abs(s1["privacy"]["sampling_rate"] - 64 / N) < 1e-12, f"{s1['privacy']} {s2['privacy']}")
    else:
        print("note: no mpirun; the 2-rank part is left out")

    # 2. Epsilon everywhere, against the reference; two epochs of 16 steps.
    p, rc = worker(run, "eps", ["--privacy.noise_multiplier", "1.0", "--train.epochs", "2", "--train.batch_size", "64"])
    checks.check("a 2-epoch DP run finishes", rc == 0, p.err_tail())
    if rc == 0:
        records = read_metrics(run.path("eps"))
        summary = read_json(run.path("eps", "summary.json"))["privacy"]
        _, tensors, show = latest_model(run, "eps")
        checks.check("metrics.jsonl has epsilon and delta after every epoch, growing",
                     len(records) == 2 and all("epsilon" in r and r["delta"] == 1e-5 for r in records) and
                     0 < records[0]["epsilon"] < records[1]["epsilon"], str(records))
        checks.check("summary.json's privacy: example-level, 32 steps, its epsilon the last epoch's",
                     summary["mode"] == "example" and summary["steps"] == 32 and
                     summary["epsilon"] == records[-1]["epsilon"] and "example" in summary["guarantee"], str(summary))
        checks.check("allround-ckpt show prints the spend, and the checkpoint holds the accountant",
                     f"privacy: epsilon {summary['epsilon']:.6g}" in show and "privacy/rdp" in tensors, show[-600:])
        ref = reference_epsilon(64 / N, 1.0, 32, 1e-5)
        if ref is not None:
            checks.check("the run's epsilon is dp_accounting's to 1%", abs(summary["epsilon"] - ref) <= 0.01 * ref,
                         f"ours {summary['epsilon']}, dp_accounting {ref}")
        else:
            print("note: no dp_accounting in the venv; the reference check is left out")

    # 3. A budget that runs out mid-run.
    p, rc = worker(run, "budget", ["--privacy.noise_multiplier", "0.7", "--privacy.target_epsilon", "8",
                                   "--train.epochs", "4", "--train.batch_size", "64"])
    checks.check("a run with a budget finishes with exit 0", rc == 0, p.err_tail())
    if rc == 0:
        s = read_json(run.path("budget", "summary.json"))["privacy"]
        over = reference_epsilon(64 / N, 0.7, s["steps"] + 1, 1e-5)
        checks.check("it stopped early, within the budget, saying so",
                     s["budget_spent"] and 0 < s["steps"] < 64 and s["epsilon"] <= 8 and "budget spent" in p.err(),
                     f"{s}\n{p.err_tail()}")
        if over is not None:
            checks.check("one more step would have passed the budget (dp_accounting)", over > 8, f"{over}")

    # 4. The noise from the target.
    p, rc = worker(run, "target", ["--privacy.target_epsilon", "3", "--train.epochs", "2", "--train.batch_size", "64"])
    checks.check("a run with only a target epsilon finishes", rc == 0, p.err_tail())
    if rc == 0:
        s = read_json(run.path("target", "summary.json"))["privacy"]
        checks.check("its noise was computed so the 32 steps spend the budget (2.9 < epsilon <= 3)",
                     s["noise_multiplier"] > 0 and s["steps"] == 32 and 2.9 < s["epsilon"] <= 3 and
                     not s["budget_spent"] and "noise multiplier" in p.err(), str(s))

    # 5. Resume.
    args = ["--privacy.noise_multiplier", "1.0", "--train.batch_size", "128", "--optimizer.momentum", "0.9",
            "--schedule.name", "constant"]  # the same learning rates whether the job says 1 epoch or 2
    # With the draws from the job seed, a resumed run is compared with an uninterrupted one.
    seeded = [*args, "--privacy.noise_seed", "job"]
    p1, rc1 = worker(run, "straight", [*seeded, "--train.epochs", "2"])
    p2, rc2 = worker(run, "resumed", [*seeded, "--train.epochs", "1"])
    p3, rc3 = worker(run, "resumed", [*seeded, "--train.epochs", "2", "--resume", "auto"])
    checks.check("the straight, stopped and resumed runs finish", rc1 == rc2 == rc3 == 0,
                 p1.err_tail() + p2.err_tail() + p3.err_tail())
    if rc1 == rc2 == rc3 == 0:
        a, _, _ = latest_model(run, "straight")
        b, _, _ = latest_model(run, "resumed")
        sa = read_json(run.path("straight", "summary.json"))["privacy"]
        sb = read_json(run.path("resumed", "summary.json"))["privacy"]
        checks.check("the resumed run ends bit-for-bit at the straight run's model", max_diff(a, b) == 0,
                     f"max difference {max_diff(a, b)}")
        checks.check("and at its epsilon", sa["epsilon"] == sb["epsilon"] and sb["steps"] == 16, f"{sa} {sb}")
    # With the default secret draws: each run draws its own secret, and a resumed run goes on with
    # the one in its checkpoint.
    secrets = {}
    for name, extra in (("secret_a", ["--train.epochs", "1"]), ("secret_b", ["--train.epochs", "1"]),
                        ("secret_a", ["--train.epochs", "2", "--resume", "auto"])):
        p, rc = worker(run, name, [*args, *extra])
        checks.check(f"{name} ({' '.join(extra)}) finishes", rc == 0, p.err_tail())
        if rc == 0:
            secrets.setdefault(name, []).append(int(latest_model(run, name)[1]["privacy/secret"][0]))
    checks.check("two fresh runs draw different secrets; the resumed run keeps its checkpoint's",
                 len(secrets.get("secret_a", [])) == 2 and len(set(secrets["secret_a"])) == 1 and
                 secrets.get("secret_b", [None])[0] != secrets["secret_a"][0], str(secrets))

    # A DP run refuses to continue a checkpoint trained without accounting.
    p4, rc4 = worker(run, "plain", ["--privacy.mode", "none", "--train.batch_size", "128", "--train.epochs", "1"])
    p5, rc5 = worker(run, "plain", [*args, "--train.epochs", "2", "--resume", "auto"])
    checks.check("a DP run refuses to resume a checkpoint trained without privacy accounting",
                 rc4 == 0 and rc5 != 0 and "without privacy accounting" in p5.err(), p5.err_tail())

    # 6. Federated sites.
    fed = [*BASE, "--data.train_limit", "512", "--privacy.noise_multiplier", "1.0", "--train.batch_size", "32",
           "--federated.rounds", "3", "--federated.min_sites", "2", "--federated.min_available", "2",
           "--partition.sites", "2", "--checkpoint.enabled", "false"]
    coord, port = start_coordinator(run, COORD, [*fed, "--no-auth", "--insecure", "--run_dir", run.path("fed")])
    sites = [run.start(f"s{i}", [WORKER, *fed, "--coordinator", f"127.0.0.1:{port}", "--insecure", "--site", f"s{i}",
                                 "--site-index", str(i), "--run_dir", run.path("sites")]) for i in range(2)]
    rc = coord.wait(300)
    checks.check("a federated run with DP-SGD at its sites finishes", rc == 0 and all(s.wait(60) == 0 for s in sites),
                 coord.err_tail())
    if rc == 0:
        eps = [r.get("site_epsilon_max") for r in read_metrics(run.path("fed"))]
        checks.check("each round's record has the sites' largest epsilon, growing over the rounds",
                     len(eps) == 3 and all(e is not None for e in eps) and eps[0] < eps[1] < eps[2], str(eps))
        # The sites' processes end with the run; new ones (the same sites, data and run directory)
        # carry on from their privacy ledgers rather than count from 0.
        fed2 = [*fed, "--federated.rounds", "1"]
        coord, port = start_coordinator(run, COORD, [*fed2, "--no-auth", "--insecure", "--run_dir", run.path("fed2")],
                                        name="coord2")
        sites = [run.start(f"t{i}", [WORKER, *fed2, "--coordinator", f"127.0.0.1:{port}", "--insecure", "--site",
                                     f"s{i}", "--site-index", str(i), "--run_dir", run.path("sites")])
                 for i in range(2)]
        rc = coord.wait(300)
        again = [r.get("site_epsilon_max") for r in read_metrics(run.path("fed2"))] if rc == 0 else []
        ledger = read_json(run.path("sites", "site-privacy", "s0.json")) if rc == 0 else {}
        checks.check("restarted sites go on counting from their privacy ledgers",
                     rc == 0 and all(s.wait(60) == 0 for s in sites) and len(again) == 1 and again[0] > eps[2] and
                     ledger.get("epsilon", 0) > eps[2], f"{again} after {eps}; {ledger.get('epsilon')}\n" + coord.err_tail())

sys.exit(checks.exit_code())
