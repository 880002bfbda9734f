#!/usr/bin/python3
"""Protocol abuse (issue 29): a client of our own sends hostile Join, GetTask, Heartbeat, FetchModel and
SubmitUpdate calls to a real allround-coordinator on loopback, and after each class of calls asserts
that the coordinator is alive, that its memory (VmRSS) and thread count stayed bounded, and, at the
end, that a real site still completes its rounds, the coordinator exits 0 and the honest
aggregation was not touched (each round's examples are the sum of the sites' true counts, no
`null` in metrics.jsonl).

The hostile site is 'a' of the tokens file (it joins honestly too, so that the round samples it and
its hostile updates reach the round); the real site is 'b' (allround-worker). The job needs both
sites each round, so the rounds cannot finish without the hostile site's honest updates, which it
sends after its attacks.

Every hostile call is counted; every check prints one 'ok' or 'FAIL' line; the run ends with one
line per class, the count of hostile calls and 'N passed, M failed'. Exit 0 when nothing failed,
77 (skipped) without grpc for Python, the generated stubs or the dataset, 1 otherwise.

Usage: protocol_abuse_test.py --coordinator BIN --worker BIN --stubs DIR [--keep]
       [--restart-after-crash] [--coordinator-arg ARG]...
  --restart-after-crash: when the coordinator dies, report it, start a fresh one and go on with the
  next call (to see every defect in one run); by default the suite stops at the first death.
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

DATA = "/usr/share/datasets/fashion-mnist"
MB = 1 << 20
I64_MAX = (1 << 63) - 1
I64_MIN = -(1 << 63)

# The limits the coordinator enforces (job keys; README), and the values this suite runs with.
FIRST_MESSAGE_S = 2.0  # --federated.first_message_s (default 10)
STREAM_IDLE_S = 3.0  # --federated.stream_idle_s (default 60)
MAX_STREAMS = 64  # federated.max_streams (default)
MAX_ECHO_CHARS = 128  # federated.max_echo_chars (default)
MAX_SITE_EXAMPLES = 10**12  # federated.max_site_examples (default)
LIMIT_FLAGS = {"federated.first_message_s": FIRST_MESSAGE_S, "federated.stream_idle_s": STREAM_IDLE_S}

# Bounds asserted after each class (and on the peak sampled during it).
RSS_SLACK_MB = 150  # over the RSS the coordinator had once it was serving
THREAD_SLACK = MAX_STREAMS + 32  # over the thread count it had once it was serving
ECHO_MESSAGE_MAX = 1024  # bytes of an error that quotes a huge request string (a few quotes of 128 and text)
ENDS_WITHIN_S = 5.0  # a stream the coordinator must end: within its limit plus this

ROUNDS = 3
FAKE_EXAMPLES = 1500  # what the hostile site declares at Join and claims in its honest updates
SUITE_DEADLINE_S = 270  # everything is killed after this (ctest's TIMEOUT is 300)

JOB = ["--data.train_limit", "3000", "--data.test_limit", "500", "--threads", "1",
       "--federated.rounds", str(ROUNDS), "--federated.min_sites", "2", "--federated.min_available", "2",
       "--partition.sites", "2", "--train.progress_every_s", "0", "--checkpoint.enabled", "false",
       "--federated.round_timeout_s", "120"]


def skip(reason):
    print(f"skipped: {reason}")
    sys.exit(77)


class Died(Exception):
    """The coordinator exited; the suite stops (or restarts it, with --restart-after-crash)."""


class Coordinator:
    def __init__(self, binary, tmp, extra_flags):
        self.binary, self.tmp, self.extra = binary, tmp, extra_flags
        self.proc = None
        self.generation = 0

    def start(self):
        self.generation += 1
        g = self.generation
        self.run_dir = os.path.join(self.tmp, f"run{g}")
        self.out = os.path.join(self.tmp, f"coord{g}.out")
        self.err = os.path.join(self.tmp, f"coord{g}.err")
        self.summary = os.path.join(self.tmp, f"summary{g}.json")
        cmd = [self.binary, *JOB, *self.extra, "--insecure", "--listen", "127.0.0.1:0",
               "--tokens", os.path.join(self.tmp, "tokens"), "--run_dir", self.run_dir,
               "--summary-json", self.summary]
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.read_err())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"the coordinator did not start listening (exit {self.proc.poll()}):\n"
                           + self.read_err()[-3000:])

    def read_err(self):
        with open(self.err, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def how_it_died(self):
        rc = self.proc.poll()
        if rc is None:
            return "running"
        if rc < 0:
            return f"killed by signal {-rc} ({signal.Signals(-rc).name})"
        return f"exited with status {rc}"

    def proc_status(self):
        """(VmRSS in MB, Threads) from /proc, or None when it is gone."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                text = f.read()
            rss = int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1)) / 1024.0
            threads = int(re.search(r"^Threads:\s+(\d+)", text, re.M).group(1))
            return rss, threads
        except (OSError, AttributeError):
            return None

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()


class Monitor(threading.Thread):
    """Samples the coordinator's RSS and threads every 20 ms; peaks since the last reset."""

    def __init__(self, coord):
        super().__init__(daemon=True)
        self.coord = coord
        self.lock = threading.Lock()
        self.peak_rss = self.peak_threads = 0
        self.stop = threading.Event()

    def reset(self):
        with self.lock:
            self.peak_rss = self.peak_threads = 0

    def peaks(self):
        with self.lock:
            return self.peak_rss, self.peak_threads

    def run(self):
        while not self.stop.wait(0.02):
            s = self.coord.proc_status() if self.coord.alive() else None
            if s:
                with self.lock:
                    self.peak_rss = max(self.peak_rss, s[0])
                    self.peak_threads = max(self.peak_threads, s[1])


class Suite:
    def __init__(self, args, pb, pbg, grpc):
        self.args, self.pb, self.pbg, self.grpc = args, pb, pbg, grpc
        self.passed = self.failed = 0
        self.calls = 0
        self.classes = []  # [name, calls, passed, failed]
        self.cls = None
        self.tmp = tempfile.mkdtemp(prefix="protocol_abuse.")
        with open(os.open(os.path.join(self.tmp, "tokens"), os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("a tokA-0123456789\nb tokB-0123456789\nc tokC-0123456789\n")
        self.tokens = {"a": "tokA-0123456789", "b": "tokB-0123456789", "c": "tokC-0123456789"}
        self.coord = None
        self.worker = None
        self.channels = []
        self.site_id = None  # the hostile site's id, once it joined honestly
        self.layout = None  # [(name, dtype, shape)] of the job's model, from an honest fetch
        self.model = []  # [(name, dtype, shape, bytes)]
        self.round, self.open_task = -1 << 62, None
        self.monitor = None
        self.hb_stop = threading.Event()
        self.crashes = []

    # ---- reporting ----------------------------------------------------------------------------
    def begin(self, name):
        self.cls = [name, 0, 0, 0]
        self.classes.append(self.cls)
        print(f"--- {name}", flush=True)
        if self.monitor:
            self.monitor.reset()

    def check(self, what, ok, detail=""):
        tag = f"[{self.cls[0]}] " if self.cls else ""
        if ok:
            self.passed += 1
            if self.cls:
                self.cls[2] += 1
            # what the coordinator answered, in short: a refusal's code and reason
            shown = detail.strip("; ") if len(detail) <= 200 else detail.strip("; ")[:200] + "..."
            print(f"ok   {tag}{what}" + (f" ({shown})" if shown else ""), flush=True)
        else:
            self.failed += 1
            if self.cls:
                self.cls[3] += 1
            print(f"FAIL {tag}{what}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def count(self, n=1):
        self.calls += n
        if self.cls:
            self.cls[1] += n

    # ---- the coordinator ------------------------------------------------------------------------
    def start_coordinator(self):
        self.coord = Coordinator(self.args.coordinator, self.tmp, self.limit_flags)
        self.coord.start()
        self.monitor = Monitor(self.coord)
        self.monitor.start()
        self.channels = []
        self.stub = self.new_stub()
        time.sleep(1.0)  # let it settle: the baseline is the serving coordinator's
        self.rss0, self.threads0 = self.coord.proc_status()
        print(f"coordinator pid {self.coord.proc.pid} on port {self.coord.port}: RSS {self.rss0:.0f} MB, "
              f"{self.threads0} threads (bounds: +{RSS_SLACK_MB} MB, +{THREAD_SLACK} threads)", flush=True)
        self.site_id = None
        threading.Thread(target=self.heartbeats, daemon=True).start()

    def restart_coordinator(self):
        """A fresh coordinator after a death: the hostile site joins it and knows the model again; a
        real site of the dead one is stopped (finish() starts another)."""
        self.hb_stop.set()
        if self.monitor:
            self.monitor.stop.set()
        self.coord.kill()
        if self.worker is not None and self.worker.poll() is None:
            self.worker.kill()
            self.worker.wait()
        self.worker = None
        self.round, self.open_task = -1 << 62, None
        self.hb_stop = threading.Event()
        self.start_coordinator()
        self.honest_join()
        if not self.model:
            code, _, chunks = self.fetch(self.site_id, self.tokens["a"], 0)
            if code is None:
                self.model = self.assemble(chunks)
                self.layout = [(n, d, s) for n, d, s, _ in self.model]
                self.honest_join()

    def new_stub(self):
        grpc = self.grpc
        opts = [("grpc.max_send_message_length", 256 * MB), ("grpc.max_receive_message_length", 256 * MB),
                # a refusal's message travels in the trailers: see it whole, however long it is
                ("grpc.max_metadata_size", 64 * MB), ("grpc.use_local_subchannel_pool", 1),
                ("grpc.enable_retries", 0)]
        ch = grpc.insecure_channel(f"127.0.0.1:{self.coord.port}", options=opts)
        self.channels.append(ch)
        return self.pbg.CoordinatorStub(ch)

    def ensure_alive(self, after):
        if not self.coord.alive():
            how = self.coord.how_it_died()
            self.check(f"the coordinator is alive after {after}", False, how)
            self.crashes.append(f"{after}: {how}")
            tail = self.coord.read_err().strip().splitlines()[-5:]
            for line in tail:
                print(f"     coordinator stderr: {line}")
            raise Died(after)

    def probe(self, what, fn, calls=1):
        """One hostile call (or `calls` of them): fn() returns (ok, detail)."""
        self.count(calls)
        try:
            ok, detail = fn()
        except Died:
            raise
        except Exception as e:  # a client-side surprise is a failed check, not the end of the suite
            ok, detail = False, f"{type(e).__name__}: {e}"
        if not self.coord.alive():
            self.ensure_alive(what)
        return self.check(what, ok, detail)

    def end_class(self):
        """After each class: alive, RSS and threads (now, and the peak sampled during the class)."""
        name = self.cls[0]
        self.ensure_alive(f"the {name} calls")
        time.sleep(0.3)
        now = self.coord.proc_status()
        self.ensure_alive(f"the {name} calls")
        peak_rss, peak_threads = self.monitor.peaks()
        rss_bound, thr_bound = self.rss0 + RSS_SLACK_MB, self.threads0 + THREAD_SLACK
        self.check("the coordinator is alive", True)
        self.check(f"RSS after the calls {now[0]:.0f} MB <= {rss_bound:.0f} MB", now[0] <= rss_bound,
                   f"{now[0] - self.rss0:+.0f} MB over the start")
        self.check(f"peak RSS during the calls {peak_rss:.0f} MB <= {rss_bound:.0f} MB", peak_rss <= rss_bound,
                   f"{peak_rss - self.rss0:+.0f} MB over the start")
        self.check(f"threads after the calls {now[1]} <= {thr_bound}", now[1] <= thr_bound)
        self.check(f"peak threads during the calls {peak_threads} <= {thr_bound}", peak_threads <= thr_bound)

    # ---- call helpers ---------------------------------------------------------------------------
    def unary(self, method, req, timeout=15):
        """(code, details) of a unary call; code is None on success."""
        try:
            getattr(self.stub, method)(req, timeout=timeout)
            return None, ""
        except self.grpc.RpcError as e:
            return e.code(), e.details() or ""

    def fetch(self, site_id, token, version, timeout=30, stub=None):
        """(code, details, chunks) of a FetchModel call."""
        chunks = []
        try:
            for c in (stub or self.stub).FetchModel(
                    self.pb.FetchRequest(site_id=site_id, token=token, model_version=version), timeout=timeout):
                chunks.append(c)
                if len(chunks) > 100000:
                    return "client", "more than 100000 chunks", chunks
            return None, "", chunks
        except self.grpc.RpcError as e:
            return e.code(), e.details() or "", chunks

    def submit(self, messages, timeout, stall_after=None, stall_s=0.0, stub=None):
        """Streams `messages` (an iterable) as one SubmitUpdate; after `stall_after` messages the
        stream goes silent for up to stall_s (until the call ends). Returns (code, details, seconds)."""
        done = threading.Event()

        def gen():
            for k, m in enumerate(messages):
                if stall_after is not None and k == stall_after:
                    done.wait(stall_s)
                    return
                if done.is_set():
                    return
                yield m
            if stall_after is not None and stall_after >= 0:
                done.wait(stall_s)

        start = time.monotonic()
        try:
            reply = (stub or self.stub).SubmitUpdate(gen(), timeout=timeout)
            code, details = None, reply.reason
        except self.grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
        done.set()
        return code, details, time.monotonic() - start

    @staticmethod
    def longest_run(text, ch):
        best = cur = 0
        for x in text:
            cur = cur + 1 if x == ch else 0
            best = max(best, cur)
        return best

    def refused(self, code, details, echo_char=None, max_len=None):
        """A refusal that says why: a non-OK status with a message; optionally a bounded echo."""
        if code is None:
            return False, f"accepted ({details!r})" if details else "accepted"
        problems = []
        if not details:
            problems.append(f"{code.name} without a reason")
        if echo_char is not None:
            # At most max_echo_chars of any request string comes back (a non-ASCII char may come back
            # as '?'), and the whole message stays short.
            run = max(self.longest_run(details, echo_char), self.longest_run(details, "?"))
            if run > MAX_ECHO_CHARS:
                problems.append(f"the error echoes {run} chars of the request (at most {MAX_ECHO_CHARS})")
            if max_len is None:
                max_len = ECHO_MESSAGE_MAX
        if max_len is not None and len(details.encode()) > max_len:
            problems.append(f"the error message is {len(details.encode())} bytes (at most {max_len})")
        shown = details if len(details) < 160 else details[:160] + f"... ({len(details)} chars)"
        return not problems, "; ".join(problems) + f" [{code.name}: {shown}]"

    def not_found(self, code, details):
        if code is None:
            return False, "returned a model"
        return code == self.grpc.StatusCode.NOT_FOUND, f"{code.name}: {details[:160]}"

    # ---- the model ------------------------------------------------------------------------------
    def assemble(self, chunks):
        """[(name, dtype, shape, bytes)] from a model's chunks."""
        out = []
        for c in chunks:
            if c.offset == 0:
                out.append([c.name, c.dtype, list(c.shape), bytearray()])
            out[-1][3] += c.data
        return [(n, d, s, bytes(b)) for n, d, s, b in out]

    def update(self, round_, examples, metrics, tensors, chunk=MB, site_id=None, token=None):
        """The messages of an honest-looking update: the first carries site, token, round, examples
        and metrics; every one carries a chunk."""
        msgs = []
        first = True
        for name, dtype, shape, data in tensors:
            off, n = 0, len(data)
            while True:
                c = self.pb.TensorChunk(offset=off, data=data[off:off + chunk])
                if off == 0:
                    c.name, c.dtype, c.total_bytes = name, dtype, n
                    c.shape.extend(shape)
                m = self.pb.UpdateChunk(chunk=c)
                if first:
                    m.site_id = self.site_id if site_id is None else site_id
                    m.token = self.tokens["a"] if token is None else token
                    m.round, m.examples = round_, examples
                    for k, v in metrics.items():
                        m.metrics[k] = v
                    first = False
                msgs.append(m)
                off += len(c.data)
                if off >= n:
                    break
        return msgs

    def heartbeats(self):
        stub = self.new_stub()
        stop = self.hb_stop
        while not stop.wait(5.0):
            if self.site_id is None:
                continue
            try:
                stub.Heartbeat(self.pb.HeartbeatRequest(site_id=self.site_id, token=self.tokens["a"]), timeout=5)
            except self.grpc.RpcError:
                pass

    def honest_join(self):
        req = self.pb.JoinRequest(site_name="a", examples=FAKE_EXAMPLES, protocol_version=2, token=self.tokens["a"])
        for name, dtype, shape in self.layout or []:
            req.model.add(name=name, dtype=dtype, shape=shape)
        reply = self.stub.Join(req, timeout=15)
        self.site_id = reply.site_id

    def wait_for_task(self, want_round_after, deadline_s):
        """GetTask until TRAIN for a round after `want_round_after` (or STOP); None at the deadline."""
        until = time.monotonic() + deadline_s
        while time.monotonic() < until:
            if not self.coord.alive():
                return None
            try:
                t = self.stub.GetTask(self.pb.TaskRequest(site_id=self.site_id, token=self.tokens["a"]), timeout=30)
            except self.grpc.RpcError as e:
                if e.code() == self.grpc.StatusCode.NOT_FOUND:
                    self.honest_join()
                time.sleep(0.2)
                continue
            if t.kind == self.pb.TaskReply.STOP:
                return t
            if t.kind == self.pb.TaskReply.TRAIN and t.round > want_round_after:
                return t
        return None

    # ---- the classes ----------------------------------------------------------------------------
    def join_class(self):
        self.begin("Join")
        pb, a = self.pb, self.tokens["a"]

        def join(what, echo_char=None, max_len=None, **kw):
            req = pb.JoinRequest(**{"protocol_version": 2, "examples": 100, **kw})
            self.probe(what, lambda: self.refused(*self.unary("Join", req, timeout=30), echo_char, max_len))

        join("protocol version 0 is refused", site_name="a", token=a, protocol_version=0)
        join("protocol version 1 (before secure aggregation) is refused", site_name="a", token=a, protocol_version=1)
        join("protocol version 3 is refused", site_name="a", token=a, protocol_version=3)
        join("protocol version 2^32-1 is refused", site_name="a", token=a, protocol_version=(1 << 32) - 1)
        join("a bad token is refused", site_name="a", token="tokA-wrong")
        join("an empty token is refused", site_name="a", token="")
        join("another site's token is refused", site_name="a", token=self.tokens["b"])
        join("an unknown site is refused", site_name="mallory", token=a)
        join("an empty site name is refused", site_name="", token=a)
        join("a 10 MB site name is refused, the error at most 300 bytes", echo_char="Q", max_len=300,
             site_name="Q" * (10 * MB), token=a)
        join("a 1 MB site name is refused, the error at most 300 bytes", echo_char="Q", max_len=300,
             site_name="Q" * MB, token=a)
        join("a 1 MB token is refused, the error not echoing it", echo_char="Q", site_name="a", token="Q" * MB)
        join("a site name with '/' is refused", site_name="a/../b", token=a)
        join("a site name with NUL is refused", site_name="a\0b", token=a)
        join("a unicode site name is refused", site_name="a\u00e9\u2603\U0001F600", token=a)
        join("a site name of 100,000 unicode chars is refused, the error not echoing it", echo_char="\u00e9",
             site_name="\u00e9" * 100000, token=a)
        join("examples 0 is refused", site_name="a", token=a, examples=0)
        join("examples -1 is refused", site_name="a", token=a, examples=-1)
        join("examples -2^63 is refused", site_name="a", token=a, examples=I64_MIN)
        join("examples 2^63-1 is refused", site_name="a", token=a, examples=I64_MAX)
        join(f"examples {MAX_SITE_EXAMPLES + 1} (above federated.max_site_examples) is refused", site_name="a",
             token=a, examples=MAX_SITE_EXAMPLES + 1)
        self.end_class()

    def task_class(self):
        self.begin("GetTask/Heartbeat")
        pb, a = self.pb, self.tokens["a"]
        # Site 'a' joins honestly (no layout yet: the model is fetched below) to have a real id.
        self.honest_join()
        me = self.site_id
        cases = [(0, a, "site id 0"), (-1, a, "site id -1"), (I64_MAX, a, "site id 2^63-1"),
                 (I64_MIN, a, "site id -2^63"), (me + 1000, a, "an unknown site id"),
                 (me, "tokA-wrong", "a bad token"), (me, "", "an empty token"),
                 (me, self.tokens["b"], "another site's token"), (me, "Q" * MB, "a 1 MB token")]
        for method, req_type in (("GetTask", pb.TaskRequest), ("Heartbeat", pb.HeartbeatRequest)):
            for sid, tok, what in cases:
                req = req_type(site_id=sid, token=tok)
                # A refusal is immediate: a hostile poll must not be held like a site's.
                def call(req=req, method=method):
                    start = time.monotonic()
                    code, details = self.unary(method, req, timeout=20)
                    ok, detail = self.refused(code, details, echo_char="Q")
                    took = time.monotonic() - start
                    if took > 5:
                        ok, detail = False, f"answered after {took:.1f} s; " + detail
                    return ok, detail
                self.probe(f"{method} with {what} is refused", call)
        self.end_class()

    def fetch_class(self):
        self.begin("FetchModel")
        a, me = self.tokens["a"], self.site_id
        # Defect 1: before anyone fetched, version -1 matched the empty cache (SIGSEGV).
        self.probe("model_version -1 before any fetch is NOT_FOUND", lambda: self.not_found(*self.fetch(me, a, -1)[:2]))
        self.probe("model_version -2 is NOT_FOUND", lambda: self.not_found(*self.fetch(me, a, -2)[:2]))
        self.probe("model_version 2^63-1 is NOT_FOUND", lambda: self.not_found(*self.fetch(me, a, I64_MAX)[:2]))
        self.probe("model_version -2^63 is NOT_FOUND", lambda: self.not_found(*self.fetch(me, a, I64_MIN)[:2]))
        self.probe("model_version 1 (not yet made) is NOT_FOUND", lambda: self.not_found(*self.fetch(me, a, 1)[:2]))
        self.probe("the current version with a bad token is refused",
                   lambda: self.refused(*self.fetch(me, "tokA-wrong", 0)[:2]))
        self.probe("the current version with another site's token is refused",
                   lambda: self.refused(*self.fetch(me, self.tokens["b"], 0)[:2]))
        self.probe("the current version for site id -1 is refused", lambda: self.refused(*self.fetch(-1, a, 0)[:2]))
        self.probe("the current version for site id 2^63-1 is refused",
                   lambda: self.refused(*self.fetch(I64_MAX, a, 0)[:2]))
        # An honest fetch (not counted): the model and its layout, for the calls below.
        code, details, chunks = self.fetch(me, a, 0)
        model = self.assemble(chunks) if code is None else []
        self.check("an honest fetch of version 0 still returns the model", code is None and len(model) > 0,
                   f"{code}: {details}")
        self.model = model
        self.layout = [(n, d, s) for n, d, s, _ in model]
        if model:
            size = sum(len(b) for *_, b in model)
            print(f"     the job's model: {len(model)} tensors, {size} bytes")
        self.probe("model_version -1 after a fetch is NOT_FOUND", lambda: self.not_found(*self.fetch(me, a, -1)[:2]))
        self.end_class()

    def layout_class(self):
        self.begin("Join with a model layout")
        pb, a = self.pb, self.tokens["a"]
        if not self.layout:
            self.check("the job's model is known (from an honest fetch)", False)
            self.end_class()
            return

        def join_layout(what, layout, echo_char=None):
            req = pb.JoinRequest(site_name="a", examples=FAKE_EXAMPLES, protocol_version=2, token=a)
            for name, dtype, shape in layout:
                req.model.add(name=name, dtype=dtype, shape=shape)
            self.probe(what, lambda: self.refused(*self.unary("Join", req, timeout=30), echo_char))

        L = self.layout
        n0, d0, s0 = L[0]
        join_layout("an unknown dtype name is refused", [(n0, "float99", s0)] + L[1:])
        other = "float64" if d0 != "float64" else "float32"
        join_layout("a wrong dtype is refused", [(n0, other, s0)] + L[1:])
        join_layout("a wrong shape is refused", [(n0, d0, [s0[0] + 1] + s0[1:] if s0 else [2])] + L[1:])
        join_layout("a negative dimension is refused", [(n0, d0, [-1] + s0[1:])] + L[1:])
        join_layout("a dimension of 2^63-1 is refused", [(n0, d0, [I64_MAX])] + L[1:])
        join_layout("tensors out of order are refused", [L[1], L[0]] + L[2:] if len(L) > 1 else [])
        join_layout("a missing tensor is refused", L[:-1] or [("x", "float32", [1])])
        join_layout("10,000 tensors are refused", [(f"t{i}", "float32", [1]) for i in range(10000)])
        join_layout("a 1 MB tensor name is refused, the error not echoing it", [("Q" * MB, d0, s0)] + L[1:],
                    echo_char="Q")
        join_layout("a 1 MB dtype name is refused, the error not echoing it", [(n0, "Q" * MB, s0)] + L[1:],
                    echo_char="Q")
        # The honest Join with the job's layout is accepted (not counted).
        try:
            self.honest_join()
            self.check("the hostile site's honest Join with the job's layout is accepted", True)
        except self.grpc.RpcError as e:
            self.check("the hostile site's honest Join with the job's layout is accepted", False, e.details())
        self.end_class()

    def unauthenticated_stream_class(self):
        self.begin("SubmitUpdate streams without a first message")
        grpc = self.grpc
        # One stream that never sends its first message: the coordinator ends it.
        limit = FIRST_MESSAGE_S + ENDS_WITHIN_S

        def silent():
            code, details, took = self.submit([], timeout=FIRST_MESSAGE_S + 15, stall_after=0,
                                              stall_s=FIRST_MESSAGE_S + 15)
            ok = code is not None and took <= limit
            return ok, f"ended after {took:.1f} s (at most {limit:.0f}) with {code.name if code else 'OK'}: {details[:120]}"
        self.probe(f"a stream that never sends its first message is ended within {limit:.0f} s", silent)

        # 200 at once, over 10 connections: bounded threads, the ones beyond the cap refused.
        n, conns = 200, 10
        stubs = [self.new_stub() for _ in range(conns)]
        results = [None] * n
        events = [threading.Event() for _ in range(n)]
        starts = [0.0] * n
        futures = []
        self.count(n)
        for i in range(n):
            ev = events[i]

            def gen(ev=ev):
                ev.wait(FIRST_MESSAGE_S + 15)
                return
                yield

            starts[i] = time.monotonic()
            f = stubs[i % conns].SubmitUpdate.future(gen(), timeout=FIRST_MESSAGE_S + 15)

            def done(fut, i=i):
                try:
                    fut.result()
                    results[i] = (None, time.monotonic() - starts[i])
                except grpc.RpcError as e:
                    results[i] = (e.code(), time.monotonic() - starts[i])
                events[i].set()
            f.add_done_callback(done)
            futures.append(f)
        time.sleep(1.0)  # all open (or refused) now; the monitor samples the threads meanwhile
        mid = self.coord.proc_status()
        if mid:
            print(f"     with {n} silent streams open: {mid[1]} threads, RSS {mid[0]:.0f} MB")
        wait_until = time.monotonic() + FIRST_MESSAGE_S + 20
        for f in futures:
            try:
                f.exception(timeout=max(0.1, wait_until - time.monotonic()))
            except Exception:
                pass
        for ev in events:
            ev.set()
        if not self.coord.alive():
            self.ensure_alive(f"{n} silent streams")
        codes = [r[0] for r in results if r]
        exhausted = sum(1 for c in codes if c == grpc.StatusCode.RESOURCE_EXHAUSTED)
        late = sum(1 for r in results if r is None or r[1] > limit)
        self.check(f"of {n} silent streams at once, at least {n - MAX_STREAMS} are refused RESOURCE_EXHAUSTED",
                   exhausted >= n - MAX_STREAMS,
                   f"{exhausted} were; codes: " + ", ".join(sorted({c.name if c else 'OK' for c in codes})))
        self.check(f"every one of the {n} silent streams is ended by the coordinator within {limit:.0f} s",
                   late == 0, f"{late} were not")

        # Streams whose first message is not a site's.
        model = self.model or [("x", "float32", [1], b"\0\0\0\0")]
        for sid, tok, what in ((self.site_id, "tokA-wrong", "a bad token"), (self.site_id, "", "no token"),
                               (0, self.tokens["a"], "site id 0"), (I64_MAX, self.tokens["a"], "site id 2^63-1"),
                               (-1, self.tokens["a"], "site id -1")):
            msgs = self.update(1, FAKE_EXAMPLES, {}, model, site_id=sid, token=tok)
            self.probe(f"an update stream with {what} is refused",
                       lambda msgs=msgs: self.refused(*self.submit(msgs, timeout=30)[:2]))
        self.probe("an empty update stream is refused", lambda: self.refused(*self.submit([], timeout=30)[:2]))
        # A bad token, then a stall: refused at once, not held.
        msgs = self.update(1, FAKE_EXAMPLES, {}, model, token="tokA-wrong")

        def bad_then_stall():
            code, details, took = self.submit(msgs, timeout=FIRST_MESSAGE_S + 15, stall_after=1,
                                              stall_s=FIRST_MESSAGE_S + 15)
            ok, detail = self.refused(code, details)
            return ok and took <= limit, f"after {took:.1f} s; {detail}"
        self.probe(f"a stream with a bad token that then stalls is ended within {limit:.0f} s", bad_then_stall)
        self.end_class()

    def site_stream_class(self):
        """Hostile updates from the joined, sampled hostile site, into an open round."""
        self.begin("SubmitUpdate from a sampled site")
        self.start_worker()

        def task():
            """The open round the hostile site trains, waiting for the next one when an earlier hostile
            update was accepted (it took the site's place in that round)."""
            if self.open_task is None:
                t = self.wait_for_task(self.round, 100)
                if t is None or t.kind != self.pb.TaskReply.TRAIN:
                    return None
                self.open_task = t
                self.round = t.round
                code, details, chunks = self.fetch(self.site_id, self.tokens["a"], t.model_version)
                self.model = self.assemble(chunks) if code is None else self.model
            return self.open_task

        def attack(what, build, timeout=60, max_s=None, **submit_kw):
            t = task()
            if t is None:
                self.ensure_alive(what)
                self.check(what, False, "not tried: no round open for the hostile site (rounds used up by "
                           "accepted hostile updates, or the real site is gone)")
                return
            msgs = build(t.round, self.model)
            result = {}

            def call():
                code, details, took = self.submit(msgs, timeout=timeout, **submit_kw)
                result["accepted"] = code is None
                ok, detail = self.refused(code, details, echo_char="Q")
                if max_s is not None and took > max_s:
                    ok, detail = False, f"ended after {took:.1f} s (at most {max_s:.0f}); " + detail
                return ok, detail
            self.probe(what, call)
            if result.get("accepted"):
                self.open_task = None  # its place in this round is taken: go on in the next one
            return result

        honest = lambda r, m, **kw: self.update(r, FAKE_EXAMPLES, {}, m, **kw)

        # One message, then silence: the coordinator ends the stream after stream_idle_s.
        limit = STREAM_IDLE_S + ENDS_WITHIN_S

        def half_first(r, m):
            name, dtype, shape, data = m[0]
            return self.update(r, FAKE_EXAMPLES, {}, [(name, dtype, shape, data)], chunk=max(1, len(data) // 2))[:1]
        attack(f"a stream that sends one message and stalls is ended within {limit:.0f} s", half_first,
               timeout=STREAM_IDLE_S + 20, max_s=limit, stall_after=1, stall_s=STREAM_IDLE_S + 20)

        # 20 empty tensors with 25 MB names, twice: names count against the stream's bytes.
        big = "Q" * (25 * MB)

        def named_stream(name, count):
            """A stream of `count` empty tensors, each called `name` plus its index."""
            def stream(r, m):
                def gen():
                    for k in range(count):
                        c = self.pb.TensorChunk(name=name + str(k), dtype="float32", total_bytes=0, offset=0)
                        c.shape.append(0)
                        msg = self.pb.UpdateChunk(chunk=c)
                        if k == 0:
                            msg.site_id, msg.token, msg.round, msg.examples = (self.site_id, self.tokens["a"], r,
                                                                               FAKE_EXAMPLES)
                        yield msg
                return gen()
            return stream

        names = named_stream("Q" * (25 * MB), 20)
        attack("a stream of 20 tensors with 25 MB names is refused", names, timeout=90)
        attack("a second stream of 20 tensors with 25 MB names is refused", names, timeout=90)
        # The same under gRPC's message limit: 200 names of 3 MB, refused by the layout, not by gRPC.
        small_names = named_stream("Q" * (3 * MB), 200)
        attack("a stream of 200 tensors with 3 MB names (each message under 4 MB) is refused", small_names,
               timeout=120)

        # A first tensor claiming 512 MB, with the data: refused at the first chunk, by the layout.
        def huge(r, m):
            name, dtype, shape, data = m[0]
            payload = b"\0" * MB

            def gen():
                for k in range(512):
                    c = self.pb.TensorChunk(offset=k * MB, data=payload)
                    if k == 0:
                        c.name, c.dtype, c.total_bytes = name, "float32", 512 * MB
                        c.shape.append(128 * MB)
                    msg = self.pb.UpdateChunk(chunk=c)
                    if k == 0:
                        msg.site_id, msg.token, msg.round, msg.examples = self.site_id, self.tokens["a"], r, FAKE_EXAMPLES
                    yield msg
            return gen()
        attack("a tensor claiming 512 MB (with its data) is refused", huge, timeout=120)

        # Lies about the layout and the bytes, each in an otherwise honest update.
        def edit_first(fn):
            def build(r, m):
                return fn(r, m, honest(r, m))
            return build

        def gap(r, m, msgs, delta):
            name, dtype, shape, data = m[0]
            half = max(4, len(data) // 2)
            h = self.update(r, FAKE_EXAMPLES, {}, m, chunk=half)
            h[1].chunk.offset += delta  # the second chunk of the first tensor
            return h
        attack("a chunk leaving a gap in the offsets is refused", edit_first(lambda r, m, _: gap(r, m, _, 8)))
        attack("a chunk overlapping the previous one is refused", edit_first(lambda r, m, _: gap(r, m, _, -8)))

        def set_first(field, value):
            def fn(r, m, msgs):
                setattr(msgs[0].chunk, field, value)
                return msgs
            return edit_first(fn)
        attack("an unknown dtype is refused", set_first("dtype", "float99"))
        attack("another dtype than the model's is refused",
               edit_first(lambda r, m, msgs: (setattr(msgs[0].chunk, "dtype", "int32"), msgs)[1]))

        def wrong_shape(r, m, msgs):
            s = list(msgs[0].chunk.shape)
            msgs[0].chunk.ClearField("shape")
            msgs[0].chunk.shape.extend([int(math.prod(s))] if len(s) > 1 else [1, s[0]] if s else [1])
            return msgs
        attack("another shape (same bytes) than the model's is refused", edit_first(wrong_shape))
        attack("a wrong name for the first tensor is refused", set_first("name", "not-a-tensor"))

        def more_data(r, m, msgs):
            name, dtype, shape, data = m[0]
            extra = self.pb.UpdateChunk(chunk=self.pb.TensorChunk(offset=len(data), data=b"\0" * 64))
            k = next(i for i in range(1, len(msgs) + 1) if i == len(msgs) or msgs[i].chunk.offset == 0)
            return msgs[:k] + [extra] + msgs[k:]
        attack("more data than a tensor declared is refused", edit_first(more_data))

        def lie_total(delta):
            def fn(r, m, msgs):
                msgs[0].chunk.total_bytes = max(0, msgs[0].chunk.total_bytes + delta)
                return msgs
            return edit_first(fn)
        attack("total_bytes larger than the tensor's is refused", lie_total(+4096))
        attack("total_bytes smaller than the tensor's is refused", lie_total(-4))
        attack("total_bytes of 2^64-1 is refused", set_first("total_bytes", (1 << 64) - 1))

        def short_data(r, m, msgs):
            name, dtype, shape, data = m[0]
            h = self.update(r, FAKE_EXAMPLES, {}, m, chunk=max(4, len(data) // 2))
            return h[:1] + h[2:]  # the first tensor's second half never comes
        attack("a tensor ending before its declared bytes is refused", edit_first(short_data))
        attack("a missing last tensor is refused",
               lambda r, m: self.update(r, FAKE_EXAMPLES, {}, m[:-1]))
        attack("an extra tensor is refused",
               lambda r, m: self.update(r, FAKE_EXAMPLES, {}, m + [("extra", "float32", [1], b"\0\0\0\0")]))
        attack("tensors out of order are refused",
               lambda r, m: self.update(r, FAKE_EXAMPLES, {}, [m[1], m[0]] + m[2:] if len(m) > 1 else m[:0]))

        # The right layout with values that must not reach the aggregate.
        def poison(value):
            def build(r, m):
                name, dtype, shape, data = m[0]
                fmt = {"float32": "f", "float64": "d"}.get(dtype, "f")
                size = struct.calcsize(fmt)
                bad = struct.pack("<" + fmt, value) * (len(data) // size)
                return self.update(r, FAKE_EXAMPLES, {}, [(name, dtype, shape, bad)] + m[1:])
            return build
        attack("NaN weights are refused", poison(float("nan")))
        attack("+Inf weights are refused", poison(float("inf")))

        # Example counts (defect 4): only what the site declared at Join.
        for examples, what in ((0, "0"), (-1, "-1"), (I64_MIN, "-2^63"), (I64_MAX, "2^63-1")):
            attack(f"an update claiming {what} examples is refused",
                   lambda r, m, e=examples: self.update(r, e, {}, m))

        # Metrics (defect 5): finite, 0 <= v <= 2^53, at most 32 keys of at most 64 chars.
        for metrics, what in (({"eval_loss_sum": float("inf")}, "+Inf"), ({"eval_loss_sum": float("nan")}, "NaN"),
                              ({"eval_loss_sum": -1.0}, "a negative value"),
                              ({"eval_loss_sum": 1.5e308, "eval_examples": 100.0}, "1.5e308"),
                              ({f"k{i}": 1.0 for i in range(10000)}, "10,000 keys"),
                              ({"Q" * MB: 1.0}, "a 1 MB key")):
            attack(f"metrics with {what} are refused", lambda r, m, mt=metrics: self.update(r, FAKE_EXAMPLES, mt, m))
        self.end_class()

    # ---- the real site and the end ----------------------------------------------------------------
    def start_worker(self):
        cmd = [self.args.worker, *JOB, "--coordinator", f"127.0.0.1:{self.coord.port}", "--insecure", "--site", "b",
               "--tokens", os.path.join(self.tmp, "tokens"), "--site-index", "1", "--give-up-s", "30"]
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.worker_err = os.path.join(self.tmp, "site-b.err")
        with open(self.worker_err, "wb") as err:
            self.worker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)

    def finish(self):
        """The hostile site now plays fair to the end; the real site completes its rounds."""
        self.cls = None
        print("--- the rounds complete", flush=True)
        if self.worker is None:
            self.start_worker()
        submitted = set()
        until = time.monotonic() + 150
        last = self.round
        if self.open_task is not None:
            last = self.open_task.round - 1  # the open round is still the hostile site's to submit
        while time.monotonic() < until and self.coord.alive():
            t = self.wait_for_task(last, max(1.0, until - time.monotonic()))
            if t is None or t.kind == self.pb.TaskReply.STOP:
                break
            code, details, chunks = self.fetch(self.site_id, self.tokens["a"], t.model_version)
            if code is not None:
                print(f"     honest fetch for round {t.round}: {code.name}: {details}")
                last = t.round - 1
                time.sleep(0.2)
                continue
            code, details, _ = self.submit(self.update(t.round, FAKE_EXAMPLES, {}, self.assemble(chunks)), timeout=60)
            if code is None:
                submitted.add(t.round)
            else:
                print(f"     honest update for round {t.round}: {code.name}: {details}")
            last = t.round
        print(f"     the hostile site submitted honest updates for {len(submitted)} round(s)")
        coord_rc = self.wait_exit(self.coord.proc, max(5.0, until - time.monotonic()))
        worker_rc = self.wait_exit(self.worker, 30) if self.worker else None
        self.check("the coordinator exits 0 after its rounds", coord_rc == 0,
                   f"exit {coord_rc}" + ("" if coord_rc != None else " (still running: killed)"))
        with open(self.worker_err, "rb") as f:
            werr = f.read().decode("utf-8", "replace")
        accepted = re.findall(r"round (\d+) update accepted \((\d+) examples\)", werr)
        self.check(f"the real site had an update accepted in each of the {ROUNDS} rounds", len(accepted) == ROUNDS,
                   f"{len(accepted)} accepted")
        self.check("the real site was told to stop and exited 0",
                   worker_rc == 0 and "coordinator says stop" in werr, f"exit {worker_rc}; " + werr.strip()[-300:])
        true_b = {int(n) for _, n in accepted}
        metrics_path = os.path.join(self.coord.run_dir, "metrics.jsonl")
        text = open(metrics_path).read() if os.path.exists(metrics_path) else ""
        self.check("metrics.jsonl holds no null, NaN or Infinity", text != "" and not re.search(r"null|NaN|Infinity", text),
                   "missing" if not text else ", ".join(l[:200] for l in text.splitlines() if re.search(r"null|NaN|Inf", l)))
        lines = []
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass
        self.check(f"metrics.jsonl has {ROUNDS} rounds", len(lines) == ROUNDS, f"{len(lines)}")
        want = {FAKE_EXAMPLES + b for b in true_b}
        for rec in lines:
            ex = rec.get("examples")
            self.check(f"round {rec.get('round')}: examples {ex} = the sites' true counts "
                       f"({FAKE_EXAMPLES} + {'/'.join(map(str, sorted(true_b))) or '?'}), from 2 sites",
                       ex in want and len(rec.get("sites", [])) == 2, f"sites {rec.get('site_names')}")
        try:
            summary = json.load(open(os.path.join(self.coord.run_dir, "summary.json")))
        except (OSError, ValueError) as e:
            summary = {"error": str(e)}
        self.check(f"summary.json: {ROUNDS} rounds, positive examples",
                   summary.get("rounds") == ROUNDS and isinstance(summary.get("examples"), int)
                   and summary["examples"] > 0, json.dumps({k: summary.get(k) for k in ("rounds", "examples", "error")}))
        if "refusals" in summary:
            print(f"     the coordinator's refusals: {json.dumps(summary['refusals'], sort_keys=True)}")
        acc = [r.get("test_accuracy") for r in lines]
        if acc:
            print(f"     test_accuracy by round: {acc}")

    @staticmethod
    def wait_exit(proc, seconds):
        try:
            return proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def report(self, started):
        print("--- classes")
        for name, calls, p, f in self.classes:
            print(f"class {name}: {calls} hostile calls, {p} passed, {f} failed")
        if self.crashes:
            print("coordinator deaths: " + "; ".join(self.crashes))
        print(f"hostile calls sent: {self.calls}")
        print(f"run time: {time.monotonic() - started:.1f} s")
        print(f"{self.passed} passed, {self.failed} failed", flush=True)

    def cleanup(self):
        self.hb_stop.set()
        if getattr(self, "monitor", None):
            self.monitor.stop.set()
        for ch in self.channels:
            try:
                ch.close()
            except Exception:
                pass
        for p in (self.worker, self.coord.proc if self.coord else None):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        if self.args.keep:
            print(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self):
        started = time.monotonic()
        # The limits this suite runs with, passed where the coordinator knows the key.
        helptext = subprocess.run([self.args.coordinator, "--help"], capture_output=True, text=True).stdout
        self.limit_flags = []
        missing = []
        extra = self.args.coordinator_arg
        for key, value in LIMIT_FLAGS.items():
            if f"--{key}" in extra or any(a.startswith(f"--{key}=") for a in extra):
                continue
            if f"--{key}" in helptext:
                self.limit_flags += [f"--{key}", str(value)]
            else:
                missing.append(key)
        self.limit_flags += extra
        try:
            self.start_coordinator()
            self.check("the coordinator knows the job keys " + ", ".join(LIMIT_FLAGS), not missing,
                       "missing: " + ", ".join(missing))
            classes = [self.join_class, self.task_class, self.fetch_class, self.layout_class,
                       self.unauthenticated_stream_class, self.site_stream_class]
            for cls in classes:
                try:
                    cls()
                except Died as d:
                    if not self.args.restart_after_crash:
                        print(f"the coordinator died ({d}): stopping (--restart-after-crash goes on with a fresh one)")
                        self.report(started)
                        return 1
                    print(f"the coordinator died ({d}): restarting it, on with the next class", flush=True)
                    self.restart_coordinator()
            self.finish()
        finally:
            self.cleanup()
        self.report(started)
        return 0 if self.failed == 0 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--worker", required=True)
    ap.add_argument("--stubs", required=True, help="the directory of federated_pb2*.py generated at build time")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, run dir)")
    ap.add_argument("--restart-after-crash", action="store_true")
    ap.add_argument("--coordinator-arg", action="append", default=[], metavar="ARG",
                    help="an extra argument for the coordinator (repeat it; e.g. to see a check fail with a "
                         "loosened limit); a limit key given here replaces the suite's value")
    args = ap.parse_args()
    if not os.path.isdir(DATA):
        skip(f"no dataset at {DATA} (Debian's dataset-fashion-mnist)")
    try:
        import grpc
        import google.protobuf  # noqa: F401
    except ImportError as e:
        skip(f"no gRPC for Python under {sys.executable} ({e}): install python3-grpcio and python3-protobuf")
    if not os.path.exists(os.path.join(args.stubs, "federated_pb2_grpc.py")):
        skip(f"no generated stubs in {args.stubs} (protoc and grpc_python_plugin were not found at build time)")
    sys.path.insert(0, args.stubs)
    try:
        import federated_pb2 as pb
        import federated_pb2_grpc as pbg
    except Exception as e:  # stubs from another protoc than this protobuf runtime
        skip(f"the stubs in {args.stubs} do not import under this Python's protobuf/grpc: {e}")
    for p in (args.coordinator, args.worker):
        if not os.access(p, os.X_OK):
            print(f"FAIL no executable {p}")
            return 1
    suite = Suite(args, pb, pbg, grpc)

    def overdue():
        print(f"FAIL the suite ran past {SUITE_DEADLINE_S} s: stopping everything", flush=True)
        for p in (suite.worker, suite.coord.proc if suite.coord else None):
            if p is not None and p.poll() is None:
                p.kill()
        suite.failed += 1
        suite.report(started)
        if not args.keep:
            shutil.rmtree(suite.tmp, ignore_errors=True)
        os._exit(1)
    started = time.monotonic()
    watchdog = threading.Timer(SUITE_DEADLINE_S, overdue)
    watchdog.daemon = True
    watchdog.start()
    rc = suite.run()
    watchdog.cancel()
    return rc


if __name__ == "__main__":
    sys.exit(main())
