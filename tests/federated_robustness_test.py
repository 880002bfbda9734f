"""Federated runs on loopback that go wrong on purpose, one scenario per ctest:
  tls           TLS with deploy/make-certs.sh: a site with the CA trains; a site without the CA,
                one with another CA, and one with a wrong token are refused.
  site_killed   a site SIGKILLed mid-round: the round closes at its deadline with the other two;
                the restarted site takes part in the next round.
  resume        the coordinator SIGKILLed just after its round-2 checkpoint (round 3 may or may
                not have closed and been saved by then) and restarted with --resume auto:
                the sites carry on, and the final model equals an uninterrupted run's, bit for bit.
                Then the same with SIGTERM (a systemd stop) after round 2 and no periodic
                checkpoints: the coordinator checkpoints the rounds closed so far and exits 0.
  many_sites    one worker process hosts 8 sites (--site-index 0-7 on 2 training threads) beside
                a single-site process and a site with its own IDX files (--data DIR); every
                round aggregates all 10.
  join_order    12 sites, 3 sampled a round, joining in two different orders (so with different
                ids): both runs sample the same sites by name and end with the same model, bit for bit.
  mpi_site      an mpirun group of 2 ranks is one site beside two single-process sites.
  fixmatch      the semi-supervised mode at 3 sites (each with the labels that fall in its share).
  vae           the VAE at 3 sites: rounds average the network; the coordinator reports the test
                ELBO, the sites their own splits' negative ELBO (federated_loss).
  gan           the GAN at 3 sites: rounds average both networks; the coordinator reports the
                Frechet distance of the global generator's images.
  mlm           masked-LM on the fortunes at 3 sites: rounds average encoder and head; every
                process trains the same tokenizer from the same corpus, fixed for the run.
  dino          DINO at 3 sites: each round averages student, teacher and center; sites evaluate
                by k-NN on their own share, the coordinator by k-NN and linear probe.

Coordinators take free ports (--listen 127.0.0.1:0), except in resume, where the restarted one
must listen where the sites look: that run takes a free port first and gives it to both starts.
Round results come from the coordinator's RUN_DIR/metrics.jsonl and summary.json; log lines only
for events with no machine-readable form (a site joined, a checkpoint saved or resumed, a site
told to stop, the error that refused something).

Usage: federated_robustness_test.py SCENARIO COORDINATOR WORKER MAKE_CERTS  (exit 77: skipped)"""
import filecmp
import glob
import gzip
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "harness"))
sys.path.insert(0, HERE)
from allround_harness import (Checks, Run, free_port, read_json, read_metrics, skip,  # noqa: E402
                              start_coordinator, wait_for_record)

if len(sys.argv) != 5:
    print(__doc__, file=sys.stderr)
    sys.exit(2)
SCENARIO, COORD, WORKER, MAKE_CERTS = sys.argv[1:]
DATA = "/usr/share/datasets/fashion-mnist"
if not os.path.isdir(DATA):
    skip(f"no {DATA}")
JOB = ["--data.train_limit", "3000", "--data.test_limit", "500", "--threads", "1", "--partition.scheme", "dirichlet",
       "--partition.beta", "0.5", "--train.progress_every_s", "0"]
checks = Checks()


def addr(port):
    return f"127.0.0.1:{port}"


def site(run, port, extra, name, index, *more, proc_name=None, launch=()):
    """A site process (stderr in site-NAME.err). `launch`, when given, runs the worker: it must
    exec it, so that the process's pid stays the worker's."""
    return run.start(proc_name or f"site-{name}",
                     [*launch, WORKER, *JOB, *extra, "--coordinator", addr(port), "--site", name,
                      "--site-index", str(index), *more])


def records(run_dir):
    return read_metrics(run_dir) if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) else []


def summary(run_dir):
    path = os.path.join(run_dir, "summary.json")
    return read_json(path) if os.path.exists(path) else {}


def every_round_had(recs, rounds, sites):
    """metrics.jsonl holds rounds 1..ROUNDS, each aggregated from SITES sites."""
    return [r.get("round") for r in recs] == list(range(1, rounds + 1)) and all(len(r["sites"]) == sites for r in recs)


def within(record, key, lo, hi):
    """record[key] is a number in [lo, hi)."""
    v = (record or {}).get(key)
    return isinstance(v, (int, float)) and lo <= v < hi


def weighted_mean(directory, rounds, sites):
    """weighted_mean_check.py on DIR/models and DIR/updates: (passed, its error)."""
    r = subprocess.run([sys.executable, os.path.join(HERE, "weighted_mean_check.py"), directory, str(rounds),
                        str(sites)], capture_output=True, text=True)
    print(r.stdout, end="")
    return r.returncode == 0, r.stderr[-600:]


def same_file(a, b):
    return os.path.exists(a) and os.path.exists(b) and filecmp.cmp(a, b, shallow=False)


def tls():
    if not shutil.which("openssl"):
        skip("no openssl")
    extra = ["--federated.rounds", "1", "--partition.sites", "1", "--federated.min_sites", "1",
             "--checkpoint.enabled", "false"]
    with Run("federated-tls") as run:
        for d in ("certs", "other"):
            if subprocess.run(["bash", MAKE_CERTS, run.path(d)], stdout=subprocess.DEVNULL).returncode != 0:
                print(f"{MAKE_CERTS} {run.path(d)} failed")
                sys.exit(1)
        certs, other, tokens = run.path("certs"), run.path("other"), run.path("tokens")
        with open(tokens, "w") as f:
            f.write("a tokA\n")
        os.chmod(tokens, 0o600)

        def refused_coordinator(name, more):
            p = run.start(name, [COORD, *JOB, *extra, "--listen", "127.0.0.1:0", *more])
            return p, p.wait(120)

        p, rc = refused_coordinator("notls", [])
        checks.check("without --tls-cert or --insecure the coordinator refuses to start, saying what to give",
                     rc not in (0, None) and "give --tls-cert FILE --tls-key FILE" in p.err(), p.err_tail())
        p, rc = refused_coordinator("notkey", ["--tokens", tokens, "--tls-cert", f"{certs}/server.pem",
                                               "--tls-key", f"{certs}/server.pem"])
        checks.check("a certificate given as the key is refused, naming the flag",
                     rc not in (0, None) and re.search(r"error: --tls-key .*: no PEM private key in it", p.err()),
                     p.err_tail())
        p, rc = refused_coordinator("otherkey", ["--tokens", tokens, "--tls-cert", f"{certs}/server.pem",
                                                 "--tls-key", f"{other}/server.key"])
        checks.check("a key that is not the certificate's is named as a cause when the server cannot start",
                     rc not in (0, None)
                     and re.search(r"or --tls-key is not the private key of --tls-cert.s certificate", p.err()),
                     p.err_tail())

        coord, port = start_coordinator(run, COORD, [*JOB, *extra, "--tokens", tokens, "--tls-cert",
                                                     f"{certs}/server.pem", "--tls-key", f"{certs}/server.key",
                                                     "--run_dir", run.path("run")])

        def worker(name, *more):
            p = run.start(name, [WORKER, *JOB, *extra, "--coordinator", addr(port), "--site", "a", *more])
            return p, p.wait(120)

        p, rc = worker("noca", "--token", "tokA")
        checks.check("a site with neither --tls-ca nor --insecure is told to give one",
                     rc not in (0, None) and "give --tls-ca FILE" in p.err(), p.err_tail())
        p, rc = worker("plain", "--token", "tokA", "--insecure", "--give-up-s", "3")
        checks.check("a plain-text site is refused by the TLS coordinator",
                     rc not in (0, None) and "error:" in p.err(), p.err_tail())
        p, rc = worker("otherca", "--token", "tokA", "--tls-ca", f"{other}/ca.pem", "--give-up-s", "3")
        checks.check("a site trusting another CA is refused", rc not in (0, None) and "error:" in p.err(), p.err_tail())
        p, rc = worker("badtoken", "--token", "wrong", "--tls-ca", f"{certs}/ca.pem")
        checks.check("a site over TLS with a wrong token is refused with a clear error",
                     rc not in (0, None) and "site 'a': unknown site or bad token" in p.err(), p.err_tail())
        checks.check("none of the refused sites ever joined", "joined as" not in coord.err(), coord.err_tail())
        p, rc = worker("good", "--token", "tokA", "--tls-ca", f"{certs}/ca.pem")
        checks.check("the site with the CA and its token trains the round over TLS",
                     rc == 0 and "round 0 update accepted" in p.err(), p.err_tail())
        rc = coord.wait(60)
        s = summary(run.path("run"))
        checks.check("the coordinator finished the round", rc == 0 and s.get("rounds") == 1,
                     f"exit {rc}, summary {s}\n{coord.err_tail()}")
        checks.check("the refusals are counted in the summary", s.get("refusals", {}).get("bad_token", 0) >= 1,
                     str(s.get("refusals")))


def site_killed():
    extra = ["--federated.rounds", "3", "--partition.sites", "3", "--federated.min_sites", "2",
             "--federated.min_available", "3", "--federated.round_timeout_s", "8", "--federated.site_timeout_s", "60",
             "--checkpoint.enabled", "false"]
    with Run("federated-site-killed") as run:
        run_dir = run.path("run")
        coord, port = start_coordinator(run, COORD, [*JOB, *extra, "--no-auth", "--insecure", "--run_dir", run_dir])
        site(run, port, extra, "a", 0, "--insecure")
        site(run, port, extra, "b", 1, "--insecure")
        # Site c must die before it submits round 1, however fast its training and however late this
        # test gets to run: it dumps each update before submitting it, through a temporary file named
        # after its pid, and that name for round 1 is a FIFO with no reader, made before the worker
        # starts (exec keeps the pid). So c blocks there, after training, and round 1 never gets its
        # update (without it, a loaded machine now and then let c submit before the kill).
        os.makedirs(run.path("c-updates"))
        fifo = ["bash", "-c", 'mkfifo "$1/round-1-site-c.safetensors.tmp.$$" && shift && exec "$@"', "_",
                run.path("c-updates")]
        victim = site(run, port, extra, "c", 2, "--insecure", "--dump-updates", run.path("c-updates"), launch=fifo)
        if not victim.wait_for(r"round 1: training", 60):
            print(f"site c never started round 1:\n{victim.err_tail()}")
        victim.kill()
        print("site c killed in round 1")
        checks.check("site c never submitted in round 1", "round 1 update" not in victim.err(), victim.err_tail())
        r2 = wait_for_record(run_dir, 2, 60, coord)
        checks.check("round 1 closed at its deadline with the two live sites",
                     r2 is not None and sorted(r2["site_names"]) == ["a", "b"] and r2["closed_by_deadline"],
                     str(r2) if r2 else coord.err_tail())
        again = site(run, port, extra, "c", 2, "--insecure", proc_name="site-c-again")
        rc = coord.wait(120)
        print(coord.out(), end="")
        recs, s = records(run_dir), summary(run_dir)
        checks.check("the coordinator finished all 3 rounds", rc == 0 and s.get("rounds") == 3,
                     f"exit {rc}, summary {s}\n{coord.err_tail()}")
        r3 = recs[-1] if recs and recs[-1]["round"] == 3 else {}
        checks.check("the restarted site took part in the next round",
                     sorted(r3.get("site_names", [])) == ["a", "b", "c"] and "round 2 update accepted" in again.err(),
                     f"{r3}\n{again.err_tail()}")
        joins = re.findall(r"site 'c' joined as (\d+)", coord.err())
        ids = {int(i) for r in recs for n, i in zip(r["site_names"], r["sites"]) if n == "c"}
        checks.check("site c rejoined under its old id",
                     len(joins) == 2 and len(set(joins)) == 1 and ids == {int(joins[0])},
                     f"joined as {joins}; ids in metrics.jsonl {ids}")


def resume():
    extra = ["--federated.rounds", "4", "--partition.sites", "3", "--federated.min_sites", "3",
             "--federated.min_available", "3", "--checkpoint.every_rounds", "1", "--federated.local_epochs", "4"]
    # One port for every start: a restarted coordinator must listen where its sites look.
    port = free_port()
    with Run("federated-resume") as run:

        def run_one(name, kill_after=0, sig=signal.SIGKILL):
            """A whole federated run; sites started one by one, so their ids are the same in every
            run too (the aggregate does not depend on them: see join_order). With SIGTERM, the run
            has no periodic checkpoints: only the stop saves one."""
            out = {"rc": None, "stop_rc": None, "coord": None, "coord2": None, "sites": []}
            more = ["--checkpoint.every_rounds", "100"] if sig == signal.SIGTERM else []
            run_dir = run.path(name, "run")
            os.makedirs(run.path(name, "models"))
            flags = [*JOB, *extra, *more, "--no-auth", "--insecure", "--run_dir", run_dir, "--dump-models",
                     run.path(name, "models"), "--resume", "auto"]
            coord, _ = start_coordinator(run, COORD, flags, name=f"{name}-coord", port=port)
            out["coord"] = coord
            for i, s in enumerate("abc"):
                out["sites"].append(site(run, port, extra, s, i, "--insecure", proc_name=f"{name}-site-{s}"))
                if not coord.wait_for(rf"site '{s}' joined", 60):
                    print(f"{name}: site {s} never joined:\n{coord.err_tail()}")
                    return out
            if kill_after and sig == signal.SIGKILL:
                if not coord.wait_for(rf"checkpoint .* saved \(round {kill_after}\)", 120):
                    print(f"{name}: no checkpoint of round {kill_after}:\n{coord.err_tail()}")
                    return out
                coord.kill()
                print(f"coordinator killed after round {kill_after}")
            elif kill_after:
                if not wait_for_record(run_dir, kill_after, 120, coord):
                    print(f"{name}: round {kill_after} never closed:\n{coord.err_tail()}")
                    return out
                coord.signal(signal.SIGTERM)
                out["stop_rc"] = coord.wait(30)
                print(f"coordinator sent SIGTERM after round {kill_after}: exit status {out['stop_rc']}")
            if kill_after:
                coord, _ = start_coordinator(run, COORD, flags, name=f"{name}-coord2", port=port)
                out["coord2"] = coord
            out["rc"] = coord.wait(180)
            for s in out["sites"]:
                s.wait(60)
            return out

        def told_to_stop(out):
            return len(out["sites"]) == 3 and all("coordinator says stop" in s.err() for s in out["sites"])

        def finished(name, out):
            return out["rc"] == 0 and summary(run.path(name, "run")).get("rounds") == 4

        def final(name):
            return run.path(name, "models", "version-4.safetensors")

        whole = run_one("whole")
        checks.check("the uninterrupted run finished", finished("whole", whole), whole["coord"].err_tail())

        killed = run_one("killed", 2)
        for p in (killed["coord"], killed["coord2"]):
            print(p.out() if p else "", end="")
        coord2_err = killed["coord2"].err() if killed["coord2"] else ""
        checks.check("the restarted coordinator resumed from its checkpoint",
                     re.search(r"resumed from checkpoint .* \([23] rounds done\)", coord2_err), coord2_err[-600:])
        checks.check("it finished the run", finished("killed", killed), coord2_err[-600:])
        checks.check("the sites survived the restart and were told to stop", told_to_stop(killed),
                     "\n".join(s.err_tail(3) for s in killed["sites"]))
        checks.check("the final model equals the uninterrupted run's, bit for bit",
                     same_file(final("whole"), final("killed")))

        stopped = run_one("stopped", 2, signal.SIGTERM)
        for p in (stopped["coord"], stopped["coord2"]):
            print(p.out() if p else "", end="")
        first_err = stopped["coord"].err()
        coord2_err = stopped["coord2"].err() if stopped["coord2"] else ""
        m = re.search(r"stopped by signal after (\d+) of 4 rounds; its state is checkpointed", first_err)
        done_at = int(m.group(1)) if m else None
        checks.check("SIGTERM: the coordinator exits 0, checkpointing the rounds closed so far",
                     stopped["stop_rc"] == 0 and done_at in (2, 3)
                     and re.search(rf"checkpoint .* saved \(round {done_at}\)", first_err),
                     f"exit {stopped['stop_rc']}\n{first_err[-600:]}")
        checks.check("the restarted coordinator resumed from that checkpoint",
                     re.search(rf"resumed from checkpoint .* \({done_at} rounds done\)", coord2_err), coord2_err[-600:])
        checks.check("it finished the run, the sites with it", finished("stopped", stopped) and told_to_stop(stopped),
                     coord2_err[-600:])
        checks.check("no site gave up or failed across the stop",
                     not any(re.search(r"allround-worker.*: error: ", s.err()) for s in stopped["sites"]),
                     "\n".join(s.err_tail(3) for s in stopped["sites"]))
        checks.check("the final model equals the uninterrupted run's, bit for bit",
                     same_file(final("whole"), final("stopped")))


def own_idx_files(dst):
    """A site's own IDX files: 400 training and 100 test images cut from the end of the
    Fashion-MNIST files, uncompressed."""
    for base, n in (("train", 400), ("t10k", 100)):
        for kind, item in (("images-idx3", 784), ("labels-idx1", 1)):
            with gzip.open(f"{DATA}/{base}-{kind}-ubyte.gz") as f:
                raw = f.read()
            dims = raw[3]
            total = struct.unpack(">I", raw[4:8])[0]
            header = raw[:4] + struct.pack(">I", n) + raw[8:4 + 4 * dims]
            body = raw[4 + 4 * dims:]
            with open(f"{dst}/{base}-{kind}-ubyte", "wb") as f:
                f.write(header + body[(total - n) * item:])


def many_sites():
    extra = ["--federated.rounds", "2", "--partition.sites", "9", "--federated.min_sites", "10",
             "--federated.min_available", "10", "--checkpoint.enabled", "false"]
    with Run("federated-many-sites") as run:
        tokens = run.path("tokens")
        with open(tokens, "w") as f:
            f.write("".join(f"sim-{i} tok{i}\n" for i in range(8)) + "solo tok8\nown tok9\n")
        os.chmod(tokens, 0o600)
        os.makedirs(run.path("own"))
        own_idx_files(run.path("own"))
        os.makedirs(run.path("models"))
        os.makedirs(run.path("updates"))
        run_dir = run.path("run")
        coord, port = start_coordinator(run, COORD, [*JOB, *extra, "--tokens", tokens, "--insecure", "--run_dir",
                                                     run_dir, "--dump-models", run.path("models")])
        many = site(run, port, extra, "sim", "0-7", "--insecure", "--tokens", tokens, "--site-threads", "2",
                    "--dump-updates", run.path("updates"), proc_name="many")
        site(run, port, extra, "solo", 8, "--insecure", "--token", "tok8", "--dump-updates", run.path("updates"))
        site(run, port, extra, "own", 0, "--insecure", "--token", "tok9", "--data", run.path("own"),
             "--dump-updates", run.path("updates"))
        rc = coord.wait(300)
        print(coord.out(), end="")
        recs = records(run_dir)
        names = sorted([f"sim-{i}" for i in range(8)] + ["solo", "own"])
        checks.check("every round aggregated all 10 sites",
                     rc == 0 and every_round_had(recs, 2, 10) and all(sorted(r["site_names"]) == names for r in recs),
                     f"exit {rc}, {[r.get('site_names') for r in recs]}\n{coord.err_tail()}")
        err = coord.err()
        checks.check("the site with its own files joined with its 400 training examples",
                     re.search(r"site 'own' joined as \d+ \(400 examples\)", err))
        checks.check("the 8 hosted sites joined under their own names",
                     len(set(re.findall(r"site '(sim-[0-7])' joined", err))) == 8
                     and len(re.findall(r"site 'sim-[0-7]' joined", err)) == 8)
        rc = many.wait(30)
        checks.check("the hosting process exited cleanly after STOP", rc == 0, f"exit {rc}\n{many.err_tail()}")
        checks.check("federated evaluation was reported",
                     recs and all(within(r, "federated_accuracy", 0, 1.000001) for r in recs), str(recs)[-600:])
        ok, detail = weighted_mean(run.dir, 2, 10)
        checks.check("each global model is the example-weighted mean of the 10 updates", ok, detail)


def join_order():
    extra = ["--federated.rounds", "3", "--partition.sites", "12", "--federated.fraction", "0.25",
             "--federated.min_sites", "3", "--federated.min_available", "12", "--checkpoint.enabled", "false"]
    with Run("federated-join-order") as run:

        def run_order(name, first, second):
            """One process hosts the sites FIRST and joins them; once all six have joined, a
            second process hosts SECOND. So the ids 1-6 go to FIRST's sites."""
            os.makedirs(run.path(name, "models"))
            coord, port = start_coordinator(run, COORD, [*JOB, *extra, "--no-auth", "--insecure", "--run_dir",
                                                         run.path(name, "run"), "--dump-models",
                                                         run.path(name, "models")], name=f"{name}-coord")
            hosts = [site(run, port, extra, "sim", first, "--insecure", "--site-threads", "2",
                          proc_name=f"{name}-first")]
            deadline = time.monotonic() + 60
            while coord.err().count("joined as") < 6 and time.monotonic() < deadline and coord.poll() is None:
                time.sleep(0.1)
            hosts.append(site(run, port, extra, "sim", second, "--insecure", "--site-threads", "2",
                              proc_name=f"{name}-second"))
            rc = coord.wait(240)
            for h in hosts:
                h.wait(60)
            return rc, coord

        rc1, forward = run_order("forward", "0-5", "6-11")
        rc2, backward = run_order("backward", "6-11", "0-5")
        print(forward.out(), end="")
        sampled = {}
        for name in ("forward", "backward"):
            sampled[name] = [sorted(r["site_names"]) for r in records(run.path(name, "run"))]
            print(f"sampled, {name}:")
            for names in sampled[name]:
                print(" ".join(names))
        checks.check("both runs finished 3 rounds of 3 sites",
                     rc1 == 0 and rc2 == 0 and every_round_had(records(run.path("forward", "run")), 3, 3)
                     and every_round_had(records(run.path("backward", "run")), 3, 3),
                     f"exit {rc1}, {rc2}\n{forward.err_tail()}\n{backward.err_tail()}")

        def id_of(coord, name):
            m = re.search(rf"site '{name}' joined as (\d+)", coord.err())
            return int(m.group(1)) if m else None

        ids = (id_of(forward, "sim-0"), id_of(backward, "sim-0"))
        checks.check("the sites joined in the two orders (sim-0's id was 1-6, then 7-12)",
                     None not in ids and ids[0] <= 6 and ids[1] >= 7, str(ids))
        checks.check("each round sampled the same sites by name",
                     sampled["forward"] and sampled["forward"] == sampled["backward"], str(sampled))
        checks.check("the final models are equal, bit for bit",
                     same_file(run.path("forward", "models", "version-3.safetensors"),
                               run.path("backward", "models", "version-3.safetensors")))


def mpi_site():
    if not shutil.which("mpirun"):
        skip("no mpirun")
    extra = ["--federated.rounds", "2", "--partition.sites", "3", "--federated.min_sites", "3",
             "--federated.min_available", "3", "--checkpoint.enabled", "false"]
    with Run("federated-mpi-site") as run:
        os.makedirs(run.path("updates"))
        run_dir = run.path("run")
        coord, port = start_coordinator(run, COORD, [*JOB, *extra, "--no-auth", "--insecure", "--run_dir", run_dir])
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_rmaps_base_oversubscribe="1")
        group = run.start("site-group", ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none", WORKER, *JOB,
                                         *extra, "--coordinator", addr(port), "--insecure", "--site", "group",
                                         "--site-index", "0", "--dump-updates", run.path("updates")], env=env)
        site(run, port, extra, "b", 1, "--insecure")
        site(run, port, extra, "c", 2, "--insecure")
        rc = coord.wait(300)
        print(coord.out(), end="")
        recs = records(run_dir)
        checks.check("every round aggregated the group and the two single sites",
                     rc == 0 and every_round_had(recs, 2, 3)
                     and all(sorted(r["site_names"]) == ["b", "c", "group"] for r in recs),
                     f"exit {rc}, {[r.get('site_names') for r in recs]}\n{coord.err_tail()}")
        rc = group.wait(60)
        checks.check("both ranks of the group stopped cleanly",
                     rc == 0 and "site group: info: coordinator says stop" in group.err(),
                     f"exit {rc}\n{group.err_tail()}")
        dumped = glob.glob(run.path("updates", "round-*-site-group.safetensors"))
        checks.check("the group submitted one update per round", len(dumped) == 2, str(dumped))


def fixmatch():
    # FixMatch at 3 sites: 10 labels per class over the whole set, each site keeps the ones in its
    # share; every round averages the model; the optimizer state stays at the site (reset per round).
    extra = ["--mode", "fixmatch", "--data.labels_per_class", "10", "--semi.mu", "2", "--train.batch_size", "32",
             "--federated.rounds", "2", "--federated.local_epochs", "4", "--optimizer.lr", "0.03",
             "--partition.sites", "3", "--partition.scheme", "iid", "--federated.min_sites", "3",
             "--federated.min_available", "3", "--checkpoint.enabled", "false"]
    with Run("federated-fixmatch") as run:
        run_dir = run.path("run")
        coord, port = start_coordinator(run, COORD, [*JOB, *extra, "--no-auth", "--insecure", "--run_dir", run_dir])
        for i, s in enumerate("abc"):
            site(run, port, extra, s, i, "--insecure")
        rc = coord.wait(300)
        print(coord.out(), end="")
        recs, s = records(run_dir), summary(run_dir)
        checks.check("FixMatch sites trained and every round aggregated all 3", rc == 0 and every_round_had(recs, 2, 3),
                     f"exit {rc}\n{coord.err_tail()}")
        checks.check("the global model learned from the few labels", s.get("test_accuracy", 0) > 0.2, str(s))


def three_sites(run, extra):
    """A coordinator dumping each global model and 3 sites dumping their updates, with the job
    flags EXTRA: 2 rounds of 1 local epoch at 3 IID sites, each evaluating a tenth of its share, no
    checkpoints. Waits for the coordinator; returns its exit status and metrics.jsonl's records."""
    extra = ["--federated.rounds", "2", "--federated.local_epochs", "1", "--federated.site_eval_fraction", "0.1",
             "--partition.sites", "3", "--partition.scheme", "iid", "--federated.min_sites", "3",
             "--federated.min_available", "3", "--checkpoint.enabled", "false", *extra]
    os.makedirs(run.path("models"))
    os.makedirs(run.path("updates"))
    coord, port = start_coordinator(run, COORD, [*JOB, *extra, "--no-auth", "--insecure", "--run_dir",
                                                 run.path("run"), "--dump-models", run.path("models")])
    sites = [site(run, port, extra, f"s{i}", i, "--insecure", "--dump-updates", run.path("updates")) for i in range(3)]
    rc = coord.wait(300)
    print(coord.out(), end="")
    if rc != 0:
        print(coord.err_tail(20))
        for s in sites:
            print(s.err_tail())
    return rc, records(run.path("run"))


def dino():
    # DINO at 3 sites, 2 rounds of 1 local epoch: a round averages everything under model/ (student,
    # teacher and its batch-norm statistics, center); the optimizer starts afresh at each site.
    extra = ["--mode", "dino", "--model.name", "simple_cnn", "--dino.local_crops", "2", "--dino.out_dim", "256",
             "--dino.knn_bank", "1000", "--dino.probe_steps", "100", "--optimizer.name", "adamw",
             "--optimizer.lr", "5e-4", "--train.batch_size", "32"]
    with Run("federated-dino") as run:
        rc, recs = three_sites(run, extra)
        checks.check("DINO sites trained and every round aggregated all 3", rc == 0 and every_round_had(recs, 2, 3))
        last = recs[-1] if recs else {}
        checks.check("the coordinator evaluated by k-NN and linear probe, the sites by k-NN on their shares",
                     all(within(r, "test_accuracy", 0, 1) and within(r, "linear_accuracy", 0, 1) for r in recs)
                     and within(last, "federated_accuracy", 0, 1), str(last))
        ok, detail = weighted_mean(run.dir, 2, 3)
        checks.check("each global model (student, teacher, center) is the example-weighted mean of the 3 updates",
                     ok, detail)
        from safetensors_np import load_file
        path = run.path("models", "version-2.safetensors")
        m = load_file(path) if os.path.exists(path) else {}
        checks.check("the update carries the teacher and the center",
                     "model/center" in m and abs(m["model/center"]).sum() > 0
                     and any(k.startswith("model/teacher/backbone.") for k in m)
                     and any(k.startswith("model/student/head.") for k in m), str(sorted(m)[:5]))


def vae():
    extra = ["--mode", "vae", "--vae.hidden", "64", "--optimizer.name", "adam", "--optimizer.lr", "1e-3",
             "--train.batch_size", "64"]
    with Run("federated-vae") as run:
        rc, recs = three_sites(run, extra)
        checks.check("VAE sites trained and every round aggregated all 3", rc == 0 and every_round_had(recs, 2, 3))
        last = recs[-1] if recs else {}
        checks.check("the coordinator reported the test ELBO and the sites their negative ELBO",
                     all(within(r, "elbo", -1e30, 0) for r in recs) and within(last, "federated_loss", 0, 1e30),
                     str(last))
        checks.check("the test ELBO improved from round 1 to round 2",
                     len(recs) == 2 and within(recs[0], "elbo", -1e30, 0)
                     and recs[1].get("elbo", -1e30) > recs[0]["elbo"],
                     str([r.get("elbo") for r in recs]))
        ok, detail = weighted_mean(run.dir, 2, 3)
        checks.check("each global model is the example-weighted mean of the 3 updates", ok, detail)


def gan():
    extra = ["--mode", "gan", "--gan.width", "16", "--gan.eval_samples", "500", "--gan.classifier_epochs", "1",
             "--optimizer.name", "adam", "--optimizer.lr", "2e-4", "--optimizer.beta1", "0.5",
             "--train.batch_size", "64"]
    with Run("federated-gan") as run:
        rc, recs = three_sites(run, extra)
        checks.check("GAN sites trained and every round aggregated all 3", rc == 0 and every_round_had(recs, 2, 3))
        checks.check("the coordinator reported the Frechet distance and the smallest class share",
                     recs and all(within(r, "fd", 0, 1e30) and within(r, "min_class_frac", 0, 1) for r in recs),
                     str(recs[-1:]))
        ok, detail = weighted_mean(run.dir, 2, 3)
        checks.check("each global model (generator and discriminator) is the example-weighted mean of the 3 updates",
                     ok, detail)


def mlm():
    if not os.path.isdir("/usr/share/games/fortunes"):
        skip("no fortunes")
    extra = ["--mode", "mlm", "--data.name", "text", "--data.dir", "/usr/share/games/fortunes",
             "--data.augment", "none", "--text.vocab_size", "600", "--text.seq_len", "32", "--mlm.hidden", "32",
             "--data.train_limit", "900", "--data.test_limit", "200", "--optimizer.name", "adamw",
             "--optimizer.lr", "2e-3", "--train.batch_size", "32"]
    with Run("federated-mlm") as run:
        rc, recs = three_sites(run, extra)
        checks.check("MLM sites trained and every round aggregated all 3", rc == 0 and every_round_had(recs, 2, 3))
        last = recs[-1] if recs else {}
        checks.check("the coordinator reported held-out MLM and unigram figures, the sites their own",
                     recs and all(within(r, "mlm_accuracy", 0, 1) and within(r, "unigram_ppl", 0, 1e30) for r in recs)
                     and within(last, "federated_loss", 0, 1e30), str(last))
        ok, detail = weighted_mean(run.dir, 2, 3)
        checks.check("each global model is the example-weighted mean of the 3 updates", ok, detail)


SCENARIOS = {f.__name__: f for f in (tls, site_killed, resume, many_sites, join_order, mpi_site, fixmatch, dino, vae,
                                     gan, mlm)}
if SCENARIO not in SCENARIOS:
    print(f"unknown scenario {SCENARIO}; one of {' '.join(SCENARIOS)}", file=sys.stderr)
    sys.exit(2)
SCENARIOS[SCENARIO]()
sys.exit(checks.exit_code())
