"""The coordinator's Prometheus metrics and status page (--metrics-listen), read by the Prometheus
project's own parser (python3-prometheus-client) and by headless Chromium (Debian's chromium):

A coordinator on loopback with a status token, 3 sites, 3 rounds, after a site with a wrong token
was refused; it keeps serving for a last scrape (--metrics-linger-s). During the run (after round
1), /metrics parses and the page, read as HTML and as headless Chromium's DOM, lists the 3 sites
with no more points than rounds closed. Then:
- every request without the token is refused (401), with it as a bearer or ?token= it is served;
- /metrics parses, and its figures are the run's own: rounds, model version, 3 observations of
  round and aggregation time (the latter's sum is metrics.jsonl's aggregate_s summed), 6 updates,
  the bad_token refusal, 2 sites joined and alive, the last accuracy and loss of metrics.jsonl,
  and the protocol bytes received equal to what the two sites say they sent;
- the status page is well-formed HTML: the job's name, "round 3 of 3", a row per site with its
  rounds contributed and examples, two SVG charts whose accuracy line has a point per round; it
  holds no token and refers to nothing outside itself; headless Chromium loads it (its DOM has the
  3 sites and 3 points) and renders it: the screenshot is kept in $ALLROUND_ARTIFACTS (ctest sets
  build/test-artifacts), as status_page.png.
- a coordinator asked to serve them beyond loopback without a token refuses to start.

Usage: watch_test.py COORDINATOR WORKER  (the venv's python3)"""
import html.parser
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
from allround_harness import Checks, Run, read_json, read_metrics, skip, start_coordinator, wait_for_record  # noqa: E402

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    skip(f"no prometheus_client ({e})")

COORD, WORKER = sys.argv[1], sys.argv[2]
DATA = "/usr/share/datasets/fashion-mnist"
if not os.path.isdir(DATA):
    skip(f"no {DATA}")
TOKEN = "status-secret-42"
JOB = ["--name", "watchrun", "--data.train_limit", "900", "--data.test_limit", "200", "--threads", "1", "--checkpoint.enabled", "false",
       "--train.progress_every_s", "0", "--model.name", "mlp", "--model.hidden", "32", "--federated.rounds", "3",
       "--federated.min_sites", "3", "--federated.min_available", "3", "--partition.sites", "3",
       "--federated.site_eval_fraction", "0.1", "--tensorboard.enabled", "false"]
checks = Checks()


def get(url, auth=None):
    req = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Page(html.parser.HTMLParser):
    """The status page's structure: title, rows of the sites table, SVGs, every URL it refers to."""

    def __init__(self):
        super().__init__()
        self.title, self.rows, self.urls, self.svgs = "", [], [], 0
        self._in_title, self._row, self._cell = False, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action") and v]
        if tag == "title":
            self._in_title = True
        elif tag == "svg":
            self.svgs += 1
        elif tag == "tr":
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ""
        elif tag == "link" or tag == "script":
            self.urls.append(a.get("href") or a.get("src") or tag)

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag == "td" and self._row is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr":
            if self._row:
                self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell += data


with Run("watch") as run:
    with open(run.path("tokens"), "w") as f:
        f.write("a tokA\nb tokB\nc tokC\n")
    os.chmod(run.path("tokens"), 0o600)

    refused = run.start("open", [COORD, *JOB, "--no-auth", "--insecure", "--listen", "127.0.0.1:0",
                                 "--metrics-listen", "0.0.0.0:0", "--run_dir", run.path("open")])
    rc = refused.wait(60)
    checks.check("metrics beyond loopback without a status token: the coordinator refuses to start",
                 rc not in (0, None) and "give --status-token" in refused.err(), refused.err_tail())

    run_dir = run.path("run")
    with open(run.path("status.token"), "w") as f:  # a file, not the command line, which ps shows
        f.write(TOKEN + "\n")
    os.chmod(run.path("status.token"), 0o600)
    coord, port = start_coordinator(run, COORD, [*JOB, "--tokens", run.path("tokens"), "--insecure",
                                                 "--run_dir", run_dir, "--metrics-listen", "127.0.0.1:0",
                                                 "--status-token-file", run.path("status.token"),
                                                 "--metrics-linger-s", "600"])
    m = coord.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", 60)
    checks.check("the coordinator says where its metrics are", m is not None, coord.err_tail())
    if m is None:
        sys.exit(checks.exit_code())
    base = f"http://127.0.0.1:{m.group(1)}"
    sites = [*JOB, "--coordinator", f"127.0.0.1:{port}", "--insecure"]
    bad = run.start("mallory", [WORKER, *sites, "--site", "a", "--token", "guess", "--site-index", "0"])
    checks.check("a site with a wrong token is refused", bad.wait(120) not in (0, None), bad.err_tail())
    procs = [run.start(name, [WORKER, *sites, "--site", name, "--token", token, "--site-index", str(i)])
             for i, (name, token) in enumerate((("a", "tokA"), ("b", "tokB"), ("c", "tokC")))]

    # During the run: after round 1, before the last.
    early = wait_for_record(run_dir, 1, 300, coord)
    status, text = get(f"{base}/metrics", f"Bearer {TOKEN}")
    families = {f.name: f for f in text_string_to_metric_families(text)} if status == 200 else {}
    rounds_now = families["allround_rounds"].samples[0].value if "allround_rounds" in families else -1
    checks.check("during the run, /metrics parses and counts the 3 sites and the rounds closed so far",
                 early is not None and families.get("allround_sites_joined") is not None and
                 families["allround_sites_joined"].samples[0].value == 3 and 1 <= rounds_now <= 3, text[:300])
    status, page = get(f"{base}/?token={TOKEN}")
    parsed = Page()
    parsed.feed(page)
    shown = re.search(r"round (\d+) of 3", page)
    accuracy_points = len(re.findall(r'data-name="test_accuracy"[^>]*points="([^"]*)"', page)[0].split()) \
        if 'data-name="test_accuracy"' in page else 0
    checks.check("during the run, the status page lists the 3 sites, with a point for each round its "
                 "curve has seen (at most the rounds closed)",
                 status == 200 and {r[0] for r in parsed.rows} == {"a", "b", "c"} and shown is not None and
                 1 <= accuracy_points <= int(shown.group(1)), f"{parsed.rows} {shown} {accuracy_points}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={run.path('chromium')}"] if chromium else None
    if browser:
        dom = subprocess.run([*browser, "--dump-dom", f"{base}/?token={TOKEN}"], capture_output=True, text=True,
                             timeout=120).stdout
        cells = re.findall(r"<tr[^>]*><td>([^<]*)</td>", dom)
        line = re.search(r'data-name="test_accuracy"[^>]*points="([^"]*)"', dom)
        shown = re.search(r"round (\d+) of 3", dom)
        checks.check("during the run, headless Chromium's DOM lists the 3 sites and a point for each round "
                     "the page has seen",
                     sorted(cells) == ["a", "b", "c"] and line is not None and shown is not None and
                     1 <= len(line.group(1).split()) <= int(shown.group(1)), f"{cells} {line and line.group(1)}")

    record = wait_for_record(run_dir, 3, 300, coord)
    ok = record is not None and all(p.wait(120) == 0 for p in procs)
    checks.check("3 rounds with all 3 sites", ok and coord.wait_for(r"stay up for", 60) is not None, coord.err_tail())
    if not ok:
        sys.exit(checks.exit_code())

    codes = [get(f"{base}/metrics")[0], get(f"{base}/")[0], get(f"{base}/metrics", "Bearer wrong")[0],
             get(f"{base}/metrics?token=wrong")[0]]
    checks.check("without the token every request is refused (401)", codes == [401] * 4, str(codes))
    status, text = get(f"{base}/metrics", f"Bearer {TOKEN}")
    checks.check("with the token as a bearer, /metrics is served", status == 200, text[:200])
    metrics = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            metrics[(s.name, tuple(sorted(s.labels.items())))] = s.value
    one = lambda name, **labels: metrics.get((name, tuple(sorted(labels.items()))))  # noqa: E731
    records = read_metrics(run_dir)
    summary = read_json(os.path.join(run_dir, "summary.json"))
    checks.check("rounds, model version and round-time observations match summary.json",
                 one("allround_rounds_total") == summary["rounds"] and
                 (one("allround_rounds_total"), one("allround_model_version"),
                  one("allround_round_duration_seconds_count"), one("allround_aggregation_seconds_count"),
                  one("allround_rounds_abandoned_total")) == (3, 3, 3, 3, 0), str(metrics)[:600])
    aggregate = sum(r["aggregate_s"] for r in records)
    checks.check("the aggregation time's sum is metrics.jsonl's aggregate_s summed",
                 abs(one("allround_aggregation_seconds_sum") - aggregate) <= 1e-9 + 1e-9 * aggregate,
                 f"{one('allround_aggregation_seconds_sum')} vs {aggregate}")
    checks.check("9 updates accepted (summary's rounds x sites), 3 sites joined and alive",
                 (one("allround_updates_accepted_total"), one("allround_sites_joined"), one("allround_sites_alive"))
                 == (summary["rounds"] * len(summary["sites"]), 3, 3) == (9, 3, 3))
    checks.check("the wrong token is counted by reason, as in the summary",
                 one("allround_refusals_total", reason="bad_token") == summary["refusals"]["bad_token"] == 1,
                 f"{one('allround_refusals_total', reason='bad_token')} {summary['refusals']}")
    checks.check("the last accuracy and loss are metrics.jsonl's last",
                 abs(one("allround_test_accuracy") - records[-1]["test_accuracy"]) < 1e-12 and
                 abs(one("allround_test_loss") - records[-1]["test_loss"]) < 1e-12 and
                 abs(one("allround_federated_accuracy") - records[-1]["federated_accuracy"]) < 1e-12)
    sent = 0
    for p in procs:
        t = re.search(r"traffic: sent (\d+) bytes, received (\d+) bytes", p.err())
        sent += int(t.group(1)) if t else -10**12
    received = one("allround_bytes_received_total")
    # The refused site's Join reached the coordinator too: a Join request is under 200 bytes.
    checks.check("the bytes received are what the sites sent (plus the refused Join)",
                 sent > 0 and 0 <= received - sent < 200 and one("allround_bytes_sent_total") > 0,
                 f"received {received}, the sites sent {sent}")

    status, page = get(f"{base}/?token={TOKEN}")
    parsed = Page()
    parsed.feed(page)
    rows = {r[0]: r for r in parsed.rows}
    checks.check("the status page names the run, its progress and each site",
                 status == 200 and "watchrun" in parsed.title and "round 3 of 3" in page and set(rows) == {"a", "b", "c"},
                 f"{parsed.title} {parsed.rows}")
    checks.check("a row per site: alive, 3 rounds contributed, its examples",
                 all(rows[n][1] == "yes" and rows[n][3] == "3" and int(rows[n][5]) > 0 for n in rows), str(rows))
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    points = []
    for svg in svgs:
        root = ET.fromstring(svg)
        for line in root.iter("{http://www.w3.org/2000/svg}polyline"):
            if line.get("data-name") == "test_accuracy":
                points = line.get("points").split()
    checks.check("two well-formed SVG charts; the accuracy line has a point per round",
                 len(svgs) == 2 and len(points) == 3, f"{len(svgs)} svgs, points {points}")
    checks.check("the page holds no token and refers to nothing outside itself",
                 TOKEN not in page and not any(t in page for t in ("tokA", "tokB", "tokC")) and not parsed.urls, str(parsed.urls))

    if browser:
        artifacts = os.environ.get("ALLROUND_ARTIFACTS") or run.dir
        os.makedirs(artifacts, exist_ok=True)
        shot = os.path.join(artifacts, "status_page.png")
        if os.path.exists(shot):
            os.remove(shot)
        args = browser
        dom = subprocess.run([*args, "--dump-dom", f"{base}/?token={TOKEN}"], capture_output=True, text=True,
                             timeout=120)
        subprocess.run([*args, f"--screenshot={shot}", "--window-size=1100,800", f"{base}/?token={TOKEN}"],
                       capture_output=True, timeout=120)
        cells = re.findall(r"<tr[^>]*><td>([^<]*)</td>", dom.stdout)
        line = re.search(r'data-name="test_accuracy"[^>]*points="([^"]*)"', dom.stdout)
        checks.check("headless Chromium loads the page: its DOM lists the 3 sites, and the accuracy curve has a "
                     "point per finished round",
                     sorted(cells) == ["a", "b", "c"] and dom.stdout.count("<svg") == 2 and line is not None and
                     len(line.group(1).split()) == 3, f"{cells} {line and line.group(1)} {dom.stderr[-300:]}")
        checks.check(f"and renders it (screenshot kept: {shot})", os.path.exists(shot) and os.path.getsize(shot) > 5000)
    else:
        print("no chromium: the page was not rendered")
    coord.signal(15)
    checks.check("SIGTERM ends the lingering coordinator cleanly", coord.wait(60) == 0, coord.err_tail())

sys.exit(checks.exit_code())
