"""The harness's own checks: processes and their output files, waiting for a line, the kill of a
whole session, waiting for a metrics record, the result rows (header, stamp, a refused mismatch),
and the record command."""
import csv
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import allround_harness as h  # noqa: E402

checks = h.Checks()
with h.Run("harness") as run:
    p = run.start("echo", [sys.executable, "-c", "import sys; print('out'); print('port 4242', file=sys.stderr)"])
    checks.check("a process's stdout and stderr land in its files", p.wait(30) == 0 and p.out() == "out\n")
    m = p.wait_for(r"port (\d+)", 5)
    checks.check("wait_for finds a line in stderr", m is not None and m.group(1) == "4242")
    sleeper = run.start("sleeper", ["bash", "-c", "sleep 300 & wait"])
    checks.check("a line that never comes is None once the deadline passes",
                 sleeper.wait_for("never", 0.3) is None)
    sleeper.kill()
    checks.check("kill ends the process and what it started", sleeper.poll() is not None)
    kept = run.dir
checks.check("leaving the run removes its directory", not os.path.exists(kept))

with tempfile.TemporaryDirectory() as d:
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.write('{"round": 1, "x": 1}\n{"round": 2, "x": 2}\n{"round": 2, "x": 3}\n{"round": 3, "x"')
    checks.check("wait_for_record gives a round's last record and skips a line still being written",
                 h.wait_for_record(d, 2, 1)["x"] == 3 and h.wait_for_record(d, 3, 0.3) is None)

with tempfile.TemporaryDirectory() as d:
    path = h.append_results("demo", [{"run": 1, "x": 2.5}, {"run": 2, "x": 3.0}], d)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    checks.check("result rows carry date, commit and machine before their own fields",
                 len(rows) == 2 and list(rows[0])[:3] == ["date", "commit", "machine"] and rows[1]["x"] == "3.0"
                 and rows[0]["commit"] != "" and "cores" in rows[0]["machine"])
    try:
        h.append_results("demo", [{"run": 3, "y": 1}], d)
        refused = False
    except ValueError:
        refused = True
    checks.check("a row with other fields than the file's header is refused", refused)
    env = dict(os.environ, ALLROUND_RESULTS=d)
    rc = subprocess.run([sys.executable, h.__file__, "record", "demo", "run=3", "x=1"], env=env).returncode
    with open(path, newline="") as f:
        checks.check("the record command appends one row", rc == 0 and len(list(csv.DictReader(f))) == 3)
    bad = subprocess.run([sys.executable, h.__file__, "record", "demo", "oops"], capture_output=True)
    checks.check("a malformed record command is a usage error", bad.returncode == 2)
sys.exit(checks.exit_code())
