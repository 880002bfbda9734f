#!/usr/bin/python3
"""tests/soak/soak.py: a federated run under chaos, as an operator would live through it.

An allround-coordinator and --sites site processes (one allround-worker each, so one SIGKILL takes
one site), each under a supervisor loop that restarts it when it dies: the coordinator with
--resume auto on the same port, a site with its old name (it rejoins under its old id). A chaos
loop, seeded by --seed, SIGKILLs a random site every --kill-every seconds (0.5x to 1.5x, drawn),
and the coordinator twice (after about a third and two thirds of the rounds). The job: --rounds
rounds (50) of a small CNN on 4,000 Fashion-MNIST images, a checkpoint every round, half the sites
sampled each round, rounds closing at a 15 s deadline with at least 5 updates.

It passes when: the run finishes all its rounds (the last coordinator exits 0 and summary.json
says --rounds); metrics.jsonl holds every round from 1 to --rounds (a round replayed after a
restart counts once, its last record); every checkpoint in the store verifies (`allround-ckpt
verify`) and the latest is of the last round; the coordinator really was killed and resumed twice
(its log says 'resumed from checkpoint' each time); no site id was ever given to two sites, and
every site the chaos killed while rounds remained joined again after its kill. It prints the kills, restarts, rejoins, refusals by reason
(summary.json) and seconds; --repeat N runs it N times in a row and fails at the first failure.

Not part of CI's default run (minutes of wall time; bench-like). Usage:
    tests/soak/soak.py [--rounds 50] [--sites 20] [--kill-every 3] [--seed 1] [--repeat 3]
BUILD_DIR names the build (default build/); ALLROUND_KEEP=1 keeps the scratch directory."""
import argparse
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "harness"))
from allround_harness import Checks, Run, free_port, read_json, read_metrics  # noqa: E402

BUILD = os.path.abspath(os.environ.get("BUILD_DIR") or os.path.join(ROOT, "build"))
COORD = os.path.join(BUILD, "coordinator", "allround-coordinator")
WORKER = os.path.join(BUILD, "worker", "allround-worker")
CKPT = os.path.join(BUILD, "storage", "allround-ckpt")


def job(a):
    return ["--name", "soak", "--seed", str(a.seed), "--threads", "1", "--model.name", "simple_cnn",
            "--data.train_limit", "4000", "--data.test_limit", "500", "--train.batch_size", "32",
            "--train.progress_every_s", "0", "--optimizer.lr", "0.05", "--tensorboard.enabled", "false",
            "--partition.sites", str(a.sites), "--federated.rounds", str(a.rounds), "--federated.fraction", "0.5",
            "--federated.min_sites", "5", "--federated.min_available", "5", "--federated.round_timeout_s", "15",
            "--federated.site_timeout_s", "10", "--federated.site_eval_fraction", "0",
            "--checkpoint.every_rounds", "1"]


class Supervised:
    """A process restarted whenever it dies, until stop(); each start is a Proc of `run`."""

    def __init__(self, run, name, argv_fn, done_fn=lambda rc: False):
        self.run, self.name, self.argv_fn, self.done_fn = run, name, argv_fn, done_fn
        self.starts, self.procs, self.stopped, self.finished_rc = 0, [], False, None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stopped:
            with self.lock:
                if self.stopped:
                    return
                p = self.run.start(f"{self.name}-{self.starts}", self.argv_fn(self.starts))
                self.procs.append(p)
                self.starts += 1
            rc = p.wait(None)
            if self.done_fn(rc):  # a clean end: not restarted
                self.finished_rc = rc
                return
            time.sleep(0.3)

    def current(self):
        with self.lock:
            return self.procs[-1] if self.procs else None

    def kill(self):
        p = self.current()
        if p is not None and p.poll() is None:
            p.kill()
            return True
        return False

    def stop(self):
        with self.lock:
            self.stopped = True
        p = self.current()
        if p is not None:
            p.kill()


def soak_once(a, attempt):
    checks = Checks()
    rng = random.Random(a.seed * 1000 + attempt)
    port = free_port()
    start = time.monotonic()
    with Run("soak") as run:
        run_dir = run.path("coord")
        flags = [*job(a), "--no-auth", "--insecure", "--run_dir", run_dir, "--resume", "auto",
                 "--listen", f"127.0.0.1:{port}"]
        coord = Supervised(run, "coord", lambda i: [COORD, *flags], done_fn=lambda rc: rc == 0)
        sites = [Supervised(run, f"site{i}", lambda k, i=i: [
            WORKER, *job(a), "--coordinator", f"127.0.0.1:{port}", "--insecure", "--site", f"s{i}", "--site-index",
            str(i), "--give-up-s", "300", "--run_dir", run.path(f"site{i}-run")],
            done_fn=lambda rc: rc == 0) for i in range(a.sites)]
        site_kills, coord_kills, must_rejoin = [], 0, []  # (name, its joins before the kill)
        kill_at = [a.rounds // 3, 2 * a.rounds // 3]
        deadline = time.monotonic() + a.rounds * 30 + 300
        next_site_kill = time.monotonic() + a.kill_every * rng.uniform(0.5, 1.5)
        while coord.finished_rc is None and time.monotonic() < deadline:
            time.sleep(0.2)
            done = 0
            if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
                try:
                    done = max((r["round"] for r in read_metrics(run_dir)), default=0)
                except (ValueError, KeyError):
                    done = 0  # a line being written
            if kill_at and done >= kill_at[0]:
                kill_at.pop(0)
                if coord.kill():
                    coord_kills += 1
                    print(f"  chaos: coordinator SIGKILLed after round {done}", flush=True)
            if time.monotonic() >= next_site_kill:
                i = rng.randrange(a.sites)
                joined = len(re.findall(rf"site 's{i}' joined as", "".join(p.err() for p in coord.procs)))
                if sites[i].kill():
                    site_kills.append(i)
                    if done < a.rounds - 3:  # the run goes on long enough for it to come back
                        must_rejoin.append((f"s{i}", joined))
                next_site_kill = time.monotonic() + a.kill_every * rng.uniform(0.5, 1.5)
        finished = coord.finished_rc == 0
        for s in sites:  # told to stop by the finished coordinator, or killed here when time ran out
            if not finished:
                s.stop()
        for s in sites:
            p = s.current()
            if p is not None and p.wait(60) is None:
                s.stop()
            s.stopped = True
        coord.stop()
        seconds = time.monotonic() - start

        summary = read_json(os.path.join(run_dir, "summary.json")) if os.path.exists(
            os.path.join(run_dir, "summary.json")) else {}
        checks.check(f"the run finished all {a.rounds} rounds through the chaos",
                     finished and summary.get("rounds") == a.rounds,
                     f"finished={finished} summary rounds={summary.get('rounds')}\n" +
                     (coord.current().err_tail(15) if coord.current() else ""))
        by_round = {}
        if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
            for r in read_metrics(run_dir):
                by_round[r["round"]] = r
        checks.check("metrics.jsonl holds every round, 1 to the last", sorted(by_round) == list(range(1, a.rounds + 1)),
                     str(sorted(set(range(1, a.rounds + 1)) - set(by_round))))
        store = os.path.join(run_dir, "checkpoints")
        verify = subprocess.run([CKPT, "verify", store], capture_output=True, text=True)
        checks.check("every checkpoint in the store verifies", verify.returncode == 0, verify.stdout[-800:] +
                     verify.stderr[-800:])
        ls = subprocess.run([CKPT, "ls", store], capture_output=True, text=True)
        # `ls` prints a header, then "<id> <round> <step> ..." a checkpoint.
        rounds_saved = [int(line.split()[1]) for line in ls.stdout.splitlines()[1:]
                        if len(line.split()) > 1 and line.split()[1].isdigit()]
        checks.check(f"the latest checkpoint is of round {a.rounds}", bool(rounds_saved) and max(rounds_saved) == a.rounds,
                     ls.stdout[-800:])
        coord_logs = "".join(p.err() for p in coord.procs)
        resumed = len(re.findall(r"resumed from checkpoint", coord_logs))
        checks.check("the coordinator was SIGKILLed twice and resumed each time", coord_kills == 2 and resumed >= 2,
                     f"kills {coord_kills}, resumes {resumed}")
        # No id was ever given to two sites, and every killed site joined again. A site keeps its id
        # across its own restarts and the coordinator's, except one whose first join came after the
        # checkpoint the coordinator resumed from: that join is lost, and it gets a fresh id.
        joins = re.findall(r"site '([^']+)' joined as (\d+)", coord_logs)
        names_of, ids_of, count = {}, {}, {}
        for name, sid in joins:
            names_of.setdefault(sid, set()).add(name)
            ids_of.setdefault(name, set()).add(sid)
            count[name] = count.get(name, 0) + 1
        killed_names = {f"s{i}" for i in site_kills}
        rejoins = sum(max(0, s.starts - 1) for s in sites)
        shared = {sid: n for sid, n in names_of.items() if len(n) > 1}
        checks.check("no site id was ever given to two sites", not shared, str(shared))
        # A site killed before it had joined (still starting) joins for the first time afterwards.
        missing = [(n, before) for n, before in must_rejoin if count.get(n, 0) <= before]
        checks.check("every site killed while the run went on joined again after its kill", not missing,
                     f"(name, joins before the kill) with no join after: {missing}; joins {count}")
        changed = {n: sorted(v) for n, v in ids_of.items() if len(v) > 1}
        refusals = summary.get("refusals", {})
        print(f"  soak {attempt + 1}: {a.rounds} rounds, {a.sites} sites, {seconds:.0f} s; sites SIGKILLed "
              f"{len(site_kills)} times ({len(killed_names)} distinct), site restarts {rejoins}, sites given a fresh id "
              f"after a lost join {changed}, coordinator "
              f"SIGKILLed {coord_kills} and resumed {resumed} times; refusals {refusals}", flush=True)
        return checks.exit_code()


def main(argv):
    p = argparse.ArgumentParser(prog="soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--sites", type=int, default=20)
    p.add_argument("--kill-every", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args(argv)
    for binary in (COORD, WORKER, CKPT):
        if not os.access(binary, os.X_OK):
            sys.exit(f"soak: build first (deploy/build.sh): no {binary}")
    for attempt in range(a.repeat):
        if soak_once(a, attempt) != 0:
            print(f"soak: failed on run {attempt + 1} of {a.repeat}")
            return 1
    print(f"soak: passed {a.repeat} time(s) in a row")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main(sys.argv[1:]))
