"""The one harness for allround's multi-process tests and benchmarks (Debian's python3, standard
library only).

It launches the real binaries with their output in files, takes free ports the way a user does
(`--listen 127.0.0.1:0`, then the port the coordinator logs), waits for log lines with a deadline,
reads what the programs write for machines (summary.json, metrics.jsonl) instead of scraping text,
tallies named checks, and appends benchmark results to CSV files in bench/results/ (one row per
run, with the date, the commit and the machine).

    from allround_harness import Checks, Run, start_coordinator
    with Run("federated") as run:
        coord, port = start_coordinator(run, COORD, job_flags + ["--no-auth", "--insecure"])
        site = run.start("site-a", [WORKER, *job_flags, "--coordinator", f"127.0.0.1:{port}", ...])
        checks = Checks()
        checks.check("the site finished", site.wait(300) == 0, site.err_tail())
        sys.exit(checks.exit_code())
"""
import csv
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = 77  # ctest's SKIP_RETURN_CODE for these tests


class Proc:
    """A process started by Run.start: its stdout and stderr go to DIR/NAME.out and NAME.err."""

    def __init__(self, name, argv, directory, env=None, stdin=None):
        self.name, self.argv = name, list(argv)
        self.out_path = os.path.join(directory, f"{name}.out")
        self.err_path = os.path.join(directory, f"{name}.err")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=err, stdin=stdin or subprocess.DEVNULL,
                                          env=env, start_new_session=True)
        self.pid = self.popen.pid

    def out(self):
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def err(self):
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def err_tail(self, lines=8):
        return "\n".join(self.err().splitlines()[-lines:])

    def poll(self):
        return self.popen.poll()

    def wait(self, timeout):
        """The exit code; a process still running after `timeout` s is killed and gives None."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def signal(self, sig):
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self):
        """SIGKILL to the process and whatever it started (its session)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait()

    def wait_for(self, pattern, timeout, stream="err"):
        """The first match of regex `pattern` in the process's stderr (or stdout), waiting up to
        `timeout` s; None if it never comes or the process ends without it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.err() if stream == "err" else self.out()
            m = regex.search(text)
            if m:
                return m
            if self.popen.poll() is not None or time.monotonic() > deadline:
                return None
            time.sleep(0.05)


class Run:
    """A scratch directory and the processes started in it; leaving the block kills any still
    running and removes the directory (kept with ALLROUND_KEEP=1, for a look after a failure)."""

    def __init__(self, name):
        self.dir = tempfile.mkdtemp(prefix=f"allround-{name}-")
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        if os.environ.get("ALLROUND_KEEP") == "1":
            print(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def start(self, name, argv, env=None):
        p = Proc(name, argv, self.dir, env=env)
        self.procs.append(p)
        return p


def start_coordinator(run, coordinator, args, name="coord", timeout=120, port=0):
    """Starts allround-coordinator on a free loopback port (--listen 127.0.0.1:0) and returns
    (proc, port) once it listens. Raises RuntimeError with its last lines if it never does.
    `port` other than 0 listens there instead: a coordinator restarted where its sites already
    look for it (take that port with free_port() before the first start)."""
    p = run.start(name, [coordinator, *args, "--listen", f"127.0.0.1:{port}"])
    m = p.wait_for(r"listening on 127\.0\.0\.1:(\d+)", timeout)
    if not m:
        p.kill()
        raise RuntimeError(f"{name} did not listen within {timeout} s:\n{p.err_tail()}")
    return p, int(m.group(1))


def free_port():
    """A loopback port free now, for the programs without a port-0 option (mpirun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_metrics(run_dir):
    """The records of RUN_DIR/metrics.jsonl, in order."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_for_record(run_dir, round_, timeout, proc=None):
    """The record of `round_` in RUN_DIR/metrics.jsonl once the coordinator wrote it (the last
    such record: a resumed run may write a round again), waiting up to `timeout` s; None if it
    never comes or `proc`, when given, ends first. A line still being written is not read."""
    path = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while True:
        # Whether to give up is decided before reading, so a record written just before the
        # process ended is still found.
        last_try = (proc is not None and proc.poll() is not None) or time.monotonic() > deadline
        try:
            with open(path) as f:
                lines = f.read().split("\n")[:-1]
        except FileNotFoundError:
            lines = []
        found = [r for r in (json.loads(line) for line in lines if line.strip()) if r.get("round") == round_]
        if found:
            return found[-1]
        if last_try:
            return None
        time.sleep(0.1)


class Checks:
    """Named checks: each prints 'ok   NAME' or 'FAIL NAME' with its detail; exit_code() is 0
    when all passed."""

    def __init__(self):
        self.passed, self.failed = 0, []

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok   {name}", flush=True)
        else:
            self.failed.append(name)
            print(f"FAIL {name}" + (f"\n     {detail}".replace("\n", "\n     ") if detail else ""), flush=True)
        return ok

    def exit_code(self):
        print(f"{self.passed} passed, {len(self.failed)} failed")
        return 1 if self.failed else 0


def commit():
    """This checkout's commit, with '+changes' when its tracked files differ from it."""
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--"], capture_output=True).returncode
        return rev + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine():
    """'HOST: CPU model, N cores' (the GPU too where nvidia-smi names one)."""
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    out = f"{socket.gethostname()}: {cpu}, {os.cpu_count()} cores"
    if shutil.which("nvidia-smi"):
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True).stdout.strip().splitlines()
        if gpu:
            out += f", {len(gpu)} x {gpu[0]}"
    return out


def append_results(bench, rows, results_dir=None):
    """Appends one CSV row per run to bench/results/BENCH.csv (made, with its header, if new):
    date, commit, machine, then each row's own fields. Every row of one file has the same fields;
    a file whose header differs is an error (name the bench anew)."""
    results_dir = results_dir or os.path.join(ROOT, "bench", "results")
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{bench}.csv")
    stamp = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "commit": commit(), "machine": machine()}
    fields = list(stamp) + list(rows[0])
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f))
        if header != fields:
            raise ValueError(f"{path} has the fields {header}, these rows {fields}")
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        for row in rows:
            w.writerow({**stamp, **row})
    return path


def record_results(bench, rows):
    """append_results where ALLROUND_RESULTS says, as the record command does: unset writes to
    bench/results/, a directory writes there, 'none' writes nothing. The file's path, or None."""
    where = os.environ.get("ALLROUND_RESULTS")
    if where == "none":
        return None
    return append_results(bench, rows, where or None)


def dp_accounting_epsilon(venv_python, q, noise, steps, delta):
    """Google dp_accounting's RDP epsilon for `steps` Poisson-sampled Gaussian steps, run in the
    venv that deploy/setup.sh makes; None when that venv or the package is missing."""
    if not venv_python or not os.path.exists(venv_python):
        return None
    code = ("import dp_accounting as d, sys; q, z, n, delta = map(float, sys.argv[1:]);"
            "a = d.rdp.RdpAccountant();"
            "a.compose(d.PoissonSampledDpEvent(q, d.GaussianDpEvent(z)), int(n));"
            "print(a.get_epsilon(delta))")
    r = subprocess.run([venv_python, "-c", code, str(q), str(noise), str(steps), str(delta)], capture_output=True,
                       text=True)
    return float(r.stdout) if r.returncode == 0 else None


def export_latest_checkpoint(ckpt, db, out):
    """The latest checkpoint of store `db`, exported with allround-ckpt to safetensors file `out`;
    returns `allround-ckpt show`'s text for it."""
    listing = subprocess.run([ckpt, "ls", db], capture_output=True, text=True).stdout.split("\n")[1:]
    ids = [line.split()[0] for line in listing if line.strip()]
    subprocess.run([ckpt, "export", db, ids[-1], out, "--format", "safetensors"], check=True, capture_output=True)
    return subprocess.run([ckpt, "show", db, ids[-1]], capture_output=True, text=True).stdout


def skip(reason):
    print(f"{reason}: skipped")
    sys.exit(SKIP)


def main(argv):
    """`allround_harness.py record BENCH KEY=VALUE...`: appends one row to bench/results/BENCH.csv
    (the shell benchmarks call it once per run). ALLROUND_RESULTS=DIR writes there instead;
    ALLROUND_RESULTS=none writes nothing."""
    if len(argv) < 3 or argv[1] != "record" or not all("=" in a for a in argv[3:]):
        print(main.__doc__, file=sys.stderr)
        return 2
    path = record_results(argv[2], [dict(a.split("=", 1) for a in argv[3:])])
    if path:
        print(f"recorded in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
