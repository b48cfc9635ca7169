#!/usr/bin/env python3
"""The load benchmark behind benches/load.sh: voxgate against nginx and HAProxy.

load.sh installs the tools and builds the binaries, then runs this file. It starts the
scripted upstream (examples/bench_upstream.rs) on the load core, voxgate, nginx and HAProxy
each pinned to the proxy core, drives them with wrk and with the small HTTP/1.1 client
below from the load core, and prints one table. Three more voxgate processes carry the
policy features (client keys and rate limits; the same limits kept in a redis-server on
the load core; the TTS cache), and a second nginx its proxy_cache; the cache phase's upstream is a counting one in this process. Everything is
on 127.0.0.1; every loop is bounded in count and time; every process started here is ended
here (and its pid written to BENCH_PIDFILE, so that load.sh's trap can end it if this
script is killed).

Standard library only.
"""

import argparse
import http.server
import json
import os
import re
import signal
import socket
import statistics
import string
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1024 * 1024
SPEECH_PATH = "/v1/audio/speech"
UPLOAD_PATH = "/v1/audio/transcriptions"
STREAM_QUERY = "?stream=10x50ms"
SPEECH_REPLY_BYTES = 32 * 1024
STREAM_REPLY_BYTES = 10 * 4 * 1024
# The whole 25 MiB upload stays within voxgate's default max_body_bytes (26_214_400).
BIG_UPLOAD_BYTES = 25 * MIB
TARGETS = ["direct", "voxgate", "nginx", "haproxy"]
PROXIES = ["voxgate", "nginx", "haproxy"]
# A second voxgate build (--voxgate-b, e.g. the plain build beside the profile-guided one):
# measured in every phase like the others, in the same runs, and compared with the first.
SECOND = "voxgate B"
# The same voxgate process, sent SIGHUP every second while wrk runs (small TTS only): what
# hot reload costs the requests going through it.
RELOADING = "voxgate, reload 1/s"
# A voxgate process whose config adds two [[clients]] with keys and limits, and global
# limits, none of them ever refusing (load/keys.toml.in); wrk presents a client's key.
# Small TTS only: what checking keys and limits costs.
KEYS = "voxgate, keys+limits"
# The same clients and limits kept in a local redis-server ([shared], load/shared.toml.in)
# instead of in-process: what sharing limits between instances costs a request.
REDIS = "voxgate, limits in Redis"
CLIENT_KEYS = ("bench-key-a-7c1e9d24f3b85a06", "bench-key-b-2f8a6e0c41d97b53")  # keys.toml.in's
# The cache phase: a voxgate process with [cache] (load/cache.toml.in) and an nginx with
# proxy_cache (load/nginx-cache.conf.in), both in front of the counting upstream, both
# answering the same speech request from their caches. Their figures go in the table's
# voxgate and nginx columns.
CACHED = "voxgate, cache"
NGINX_CACHED = "nginx, proxy_cache"
CACHE_FIGURES = {  # the cache phase's figures: target -> table column
    CACHED: "voxgate",
    NGINX_CACHED: "nginx",
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slug(name):
    """A file name for a target: "voxgate, keys+limits" -> "voxgate-keys-limits"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def percentile(samples, q):
    """The q-th percentile (0-100) of samples, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


# ---------------------------------------------------------------------------------------
# processes


class Procs:
    """Every process started here, ended in reverse order, by pid.

    BENCH_PIDFILE always lists the pids that are alive and ours (nginx's worker included),
    so that load.sh's trap can end them if this script cannot, and never a pid that has
    been reaped already (and may since belong to someone else).
    """

    def __init__(self, pidfile):
        self.pidfile = pidfile
        self.started = []
        self.extra = {}  # pid of a started process -> pids of its children we noted

    def _write(self):
        if not self.pidfile:
            return
        pids = []
        for p in self.started:
            pids.append(p.pid)
            pids += self.extra.get(p.pid, [])
        with open(self.pidfile, "w") as f:
            f.write("".join(f"{pid}\n" for pid in pids))

    def note_children(self, p, pids):
        self.extra[p.pid] = [pid for pid in pids if pid != p.pid]
        self._write()

    def start(self, argv, stdout=subprocess.DEVNULL, stderr=None, env=None):
        p = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env, stdin=subprocess.DEVNULL)
        self.started.append(p)
        self._write()
        return p

    def stop(self, p, timeout=5.0):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)
        if p in self.started:
            self.started.remove(p)
        self.extra.pop(p.pid, None)
        self._write()

    def stop_all(self):
        for p in reversed(list(self.started)):
            try:
                self.stop(p)
            except Exception as e:  # keep ending the others
                log(f"could not stop pid {p.pid}: {e}")


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree(pid):
    """pid and all its descendants (nginx: master and worker)."""
    result, todo = [], [pid]
    while todo and len(result) < 64:
        p = todo.pop()
        result.append(p)
        todo += children(p)
    return result


def cpu_seconds(pids, user_only=False):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15; fields[0] here is field 3 (state).
        total += int(fields[11]) + (0 if user_only else int(fields[12]))
    return total / tick


def core_busy_seconds(core):
    """Seconds core `core` spent running processes (or stolen by the hypervisor) since boot.

    irq and softirq time is left out: on loopback, the receiving half of every send the
    proxy makes runs as softirq on the proxy's core (about a fifth of it under load here),
    and it is not charged to any process, the proxy included.
    """
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                user, nice, system, _idle, _iowait, _irq, _softirq, steal = (
                    int(x) for x in line.split()[1:9])
                return (user + nice + system + steal) / tick
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def status_kib(pids, key):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return total


def reset_peak(pids):
    """Resets VmHWM to the current RSS (clear_refs 5), so each run has its own peak."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError as e:
            log(f"cannot reset the peak RSS of {pid} ({e}): peaks are since start")


# ---------------------------------------------------------------------------------------
# a small HTTP/1.1 client, keep-alive, with time to first body byte


class HttpError(Exception):
    pass


class Conn:
    def __init__(self, port, timeout=30.0):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.headers = {}  # the last response's, names in lower case
        self.first_byte = None  # s from sending the last request to its first response byte

    def close(self):
        self.sock.close()

    def _fill(self):
        data = self.sock.recv(262144)
        if not data:
            raise HttpError("connection closed by the server")
        self.buf += data

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self):
        while b"\r\n" not in self.buf:
            if len(self.buf) > 65536:
                raise HttpError("line too long")
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def request(self, raw):
        """Sends one request; returns (status, body bytes, s to first body byte, s in all)."""
        t0 = time.perf_counter()
        self.sock.sendall(raw)
        if not self.buf:
            self._fill()
        self.first_byte = time.perf_counter() - t0
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 65536:
                raise HttpError("headers too long")
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.headers = headers
        length = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if length == "0":
            t_first = time.perf_counter()
            return status, 0, t_first - t0, t_first - t0
        while not self.buf:
            self._fill()
        t_first = time.perf_counter()
        received = 0
        if chunked:
            for _ in range(1_000_000):
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():  # trailers, then the empty line
                        pass
                    break
                received += len(self._take(size))
                self._take(2)
        elif length is not None:
            received = len(self._take(int(length)))
        else:
            raise HttpError("response without length: not supported")
        t_end = time.perf_counter()
        if headers.get("connection", "").lower() == "close":
            raise HttpError("server closed the connection")
        return status, received, t_first - t0, t_end - t0


def raw_post(port, path, body, ctype, key=None):
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n"
        f"{auth}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def http_get_status(port, path, timeout=1.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data and len(data) < 4096:
            part = s.recv(4096)
            if not part:
                break
            data += part
        return int(data.split(b" ", 2)[1])


def wait_ready(port, deadline_s=10.0, interval_s=0.0005, proc=None):
    """Polls GET /health until 200; returns seconds waited. Bounded in time."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with status {proc.returncode} before it was ready")
        try:
            if http_get_status(port, "/health") == 200:
                return time.perf_counter() - t0
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(interval_s)
    raise RuntimeError(f"nothing answered GET /health on port {port} within {deadline_s} s")


class CountingUpstream:
    """The cache phase's upstream: answers a speech POST as bench_upstream does (32 KiB of
    audio/pcm with a Content-Length) and counts the requests it answered, so that the bench
    can check the caches sent it nothing after their warm-up. Slow (Python), which does not
    matter while nothing reaches it, and would show if something did."""

    def __init__(self, port):
        counts = self.counts = {}
        lock = self.lock = threading.Lock()
        reply = bytes(i % 251 for i in range(SPEECH_REPLY_BYTES))  # bench_upstream's sawtooth

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the proxies' pools expect

            def _answer(self, status, ctype, body):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._answer(200 if self.path == "/health" else 404, "text/plain", b"ok\n")

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length > 1 << 20:
                    self.close_connection = True
                    self._answer(413, "text/plain", b"too large\n")
                    return
                self.rfile.read(length)
                with lock:
                    counts[self.path] = counts.get(self.path, 0) + 1
                if self.path.endswith(SPEECH_PATH):
                    self._answer(200, "audio/pcm", reply)
                else:
                    self._answer(404, "text/plain", b"not found\n")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)
        self.thread.start()

    def speech_requests(self):
        with self.lock:
            return sum(n for path, n in self.counts.items() if path.endswith(SPEECH_PATH))

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def metric(port, name, labels):
    """One counter from voxgate's /metrics, by its exact label set (`{result="hit"}`)."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy
    with direct.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + labels + " "):
            return float(line.split()[-1])
    raise RuntimeError(f"no {name}{labels} in voxgate's /metrics")


# ---------------------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = args.workdir
        self.procs = Procs(os.environ.get("BENCH_PIDFILE"))
        b = args.port_base
        self.ports = {
            "direct": b,
            "upstream_503": b + 1,
            "dead": b + 9,
            "voxgate": b + 10,
            SECOND: b + 13,
            "nginx": b + 11,
            "haproxy": b + 12,
            KEYS: b + 14,
            REDIS: b + 18,
            "redis": b + 19,
            CACHED: b + 15,
            NGINX_CACHED: b + 16,
            "cache_upstream": b + 17,
        }
        self.running = {}  # proxy name -> Popen
        self.results = {}  # figure -> target -> value
        self.per_run = {}  # figure -> [{target: value} for each run], for the paired ratios
        self.notes = []
        self.noise = []  # per kept proxy run: share of the proxy core taken by other processes
        self.reruns_left = 6
        self.reruns = 0

    # -- setup ----------------------------------------------------------------------

    def check_ports_free(self):
        for name, port in self.ports.items():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                sys.exit(f"port {port} ({name}) is in use: set BENCH_PORT_BASE to another base")
            finally:
                s.close()

    def write_inputs(self):
        j = os.path.join
        subst = {
            "workdir": self.work,
            "upstream_port": self.ports["direct"],
            "upstream_503_port": self.ports["upstream_503"],
            "dead_port": self.ports["dead"],
            "user_line": "user root;" if os.geteuid() == 0 else "",
        }
        # The cache phase's proxies send their misses to the counting upstream.
        cached = dict(subst, upstream_port=self.ports["cache_upstream"])
        for name, templates, values, out in [
            ("voxgate", ["voxgate.toml.in"], subst, "voxgate.toml"),
            (SECOND, ["voxgate.toml.in"], subst, "voxgate-b.toml"),
            ("nginx", ["nginx.conf.in"], subst, "nginx.conf"),
            ("haproxy", ["haproxy.cfg.in"], subst, "haproxy.cfg"),
            (KEYS, ["voxgate.toml.in", "keys.toml.in"], subst, "voxgate-keys.toml"),
            (REDIS, ["voxgate.toml.in", "keys.toml.in", "shared.toml.in"],
             dict(subst, redis_port=self.ports["redis"]), "voxgate-redis.toml"),
            (CACHED, ["voxgate.toml.in", "cache.toml.in"], cached, "voxgate-cache.toml"),
            (NGINX_CACHED, ["nginx-cache.conf.in"], cached, "nginx-cache.conf"),
        ]:
            text = ""
            for template in templates:
                with open(j(HERE, template)) as f:
                    text += string.Template(f.read()).substitute(values, port=self.ports[name])
            with open(j(self.work, out), "w") as f:
                f.write(text)
        for d in ["nginx-body", "nginx-proxy", "nginx-cache-body", "nginx-cache-proxy", "nginx-cache"]:
            os.makedirs(j(self.work, d), exist_ok=True)

        speech = {"model": "tts-1", "input": "Hello from the benchmark.", "voice": "alloy",
                  "response_format": "pcm"}
        self.bodies = {}
        for name, model in [("speech", "tts-1"), ("fb503", "fb503"), ("fbdead", "fbdead")]:
            body = json.dumps(dict(speech, model=model)).encode()
            self.bodies[name] = body
            with open(j(self.work, f"{name}.json"), "wb") as f:
                f.write(body)

        # Multipart uploads with the file first and `model` after it (openai-node's order:
        # the router cannot decide before the whole file has gone by).
        self.boundary = "voxgate-bench-3f9a1c5e7b2d4086"
        for name, total in [("upload10", 10 * MIB), ("upload25", BIG_UPLOAD_BYTES)]:
            head = (
                f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"speech.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
            ).encode()
            tail = (
                f"\r\n--{self.boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
                f"whisper-1\r\n--{self.boundary}--\r\n"
            ).encode()
            size = total - len(head) - len(tail)
            pattern = bytes((i * 7 + 3) % 256 for i in range(65536))
            with open(j(self.work, f"{name}.multipart"), "wb") as f:
                f.write(head)
                left = size
                while left > 0:
                    f.write(pattern[: min(left, len(pattern))])
                    left -= len(pattern)
                f.write(tail)
        self.multipart_ctype = f"multipart/form-data; boundary={self.boundary}"

    def proxy_argv(self, name):
        j = os.path.join
        pin = ["taskset", "-c", self.args.proxy_core]
        if name == "voxgate":
            return pin + [self.args.voxgate, "--config", j(self.work, "voxgate.toml")]
        if name == SECOND:
            return pin + [self.args.voxgate_b, "--config", j(self.work, "voxgate-b.toml")]
        if name == KEYS:
            return pin + [self.args.voxgate, "--config", j(self.work, "voxgate-keys.toml")]
        if name == REDIS:
            return pin + [self.args.voxgate, "--config", j(self.work, "voxgate-redis.toml")]
        if name == CACHED:
            return pin + [self.args.voxgate, "--config", j(self.work, "voxgate-cache.toml")]
        if name == "nginx":
            return pin + ["nginx", "-c", j(self.work, "nginx.conf"), "-e", j(self.work, "nginx-error.log")]
        if name == NGINX_CACHED:
            return pin + ["nginx", "-c", j(self.work, "nginx-cache.conf"),
                          "-e", j(self.work, "nginx-cache-error.log")]
        if name == "haproxy":
            return pin + ["haproxy", "-db", "-f", j(self.work, "haproxy.cfg")]
        raise ValueError(name)

    def proxy_env(self, name):
        env = dict(os.environ)
        if name in ("voxgate", SECOND, KEYS, REDIS, CACHED):
            # The access log off, as nginx (access_log off) and HAProxy (no log) run here.
            env["RUST_LOG"] = self.args.voxgate_log
        return env

    def start_proxy(self, name):
        log_path = os.path.join(self.work, f"{slug(name)}.log")  # and the error output: see it on failure
        with open(log_path, "ab") as out:
            p = self.procs.start(self.proxy_argv(name), stdout=out, stderr=out, env=self.proxy_env(name))
        return p

    def start_upstream(self):
        argv = ["taskset", "-c", self.args.load_core, self.args.upstream,
                f"127.0.0.1:{self.ports['direct']}", f"127.0.0.1:{self.ports['upstream_503']}"]
        self.upstream = self.procs.start(argv, stdout=subprocess.PIPE)
        for _ in range(2):
            line = self.upstream.stdout.readline().decode().strip()
            if not line.startswith("listening"):
                sys.exit(f"bench_upstream did not start: {line!r}")
        wait_ready(self.ports["direct"], 5.0, proc=self.upstream)

    # -- measurements -------------------------------------------------------------------

    def pids(self, target):
        if target == "direct":
            return []
        p = self.running["voxgate" if target == RELOADING else target]
        pids = tree(p.pid)
        self.procs.note_children(p, pids)
        return pids

    def reloads_done(self):
        """(succeeded, failed) reloads so far, from voxgate's /status."""
        url = f"http://127.0.0.1:{self.ports['voxgate']}/status"
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy
        with direct.open(url, timeout=10) as response:
            r = json.load(response)["config"]["reloads"]
        return r["succeeded"], r["failed"]

    def reloading(self, stop):
        """SIGHUP to voxgate every second until `stop` is set."""
        pid = self.running["voxgate"].pid
        pids = [q for q in tree(pid) if q != pid] or [pid]  # taskset execs voxgate in place
        while not stop.wait(1.0):
            for q in pids:
                os.kill(q, signal.SIGHUP)

    def wrk(self, target, path, body_file, ctype, conns, seconds, peak=False):
        port = self.ports["voxgate" if target == RELOADING else target]
        url = f"http://127.0.0.1:{port}{path}"
        env = dict(os.environ, BENCH_BODY=body_file, BENCH_CTYPE=ctype,
                   BENCH_KEY=CLIENT_KEYS[1] if target in (KEYS, REDIS) else "")
        argv = ["taskset", "-c", self.args.load_core, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s",
                "--timeout", "30s", "-s", os.path.join(HERE, "post.lua"), url]
        pids = self.pids(target)
        core = self.args.proxy_core
        if peak:
            reset_peak(pids)
        cpu0 = cpu_seconds(pids) if pids else 0.0
        user0 = cpu_seconds(pids, user_only=True) if pids else 0.0
        busy0, wall0 = core_busy_seconds(core), time.perf_counter()
        stop_reloads, reloader, before = threading.Event(), None, None
        if target == RELOADING:
            before = self.reloads_done()
            reloader = threading.Thread(target=self.reloading, args=(stop_reloads,), daemon=True)
            reloader.start()
        p = self.procs.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            stdout, stderr = (b.decode(errors="replace") for b in p.communicate(timeout=seconds + 60))
        finally:
            self.procs.stop(p)  # reaps it; ends it only if the timeout fired
            if reloader:
                stop_reloads.set()
                reloader.join(5)
        cpu1 = cpu_seconds(pids) if pids else 0.0
        user1 = cpu_seconds(pids, user_only=True) if pids else 0.0
        busy1, wall1 = core_busy_seconds(core), time.perf_counter()
        # What others (a compiler, a test suite) took of the proxy core meanwhile.
        noise = max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / (wall1 - wall0)
        line = next((l for l in stdout.splitlines() if l.startswith("BENCH_RESULT")), None)
        if p.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed against {target}: {stdout}\n{stderr}")
        r = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
        errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
        if errors:
            self.notes.append(f"{target} {path} c={conns}: {errors} errors in {r['requests']} requests ({line})")
        r["seconds"] = r["duration_us"] / 1e6
        r["rps"] = r["requests"] / r["seconds"]
        r["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / r["requests"] if pids and r["requests"] else None
        r["user_us_per_req"] = (user1 - user0) * 1e6 / r["requests"] if pids and r["requests"] else None
        r["errors"] = errors
        r["noise"] = noise
        r["peak_kib"] = status_kib(pids, "VmHWM") if peak and pids else None
        if before is not None:
            time.sleep(0.2)  # the last reload's swap
            after = self.reloads_done()
            r["reloads"] = after[0] - before[0]
            if after[1] != before[1] or r["reloads"] < seconds - 1:
                raise RuntimeError(f"reloads under load: {before} -> {after} (succeeded, failed) in {seconds} s")
        return r

    def timed(self, target, *args, **kwargs):
        """A timed wrk run. A proxy run during which other processes took more than
        NOISY of the proxy core is run again (a few times in all, to bound the time), and
        the quieter of the two kept."""
        r = self.wrk(target, *args, **kwargs)
        while target != "direct" and r["noise"] > self.NOISY and self.reruns_left > 0:
            self.reruns_left -= 1
            log(f"  ({target}: others took {r['noise']:.0%} of the proxy core; running again)")
            again = self.wrk(target, *args, **kwargs)
            self.reruns += 1
            if again["noise"] < r["noise"]:
                r = again
        if target != "direct":
            self.noise.append(r["noise"])
        return r

    @staticmethod
    def order(run):
        """TARGETS for one round: the two voxgate builds swap places every other round, so
        that neither always follows the same neighbour (an order effect of up to 10 % was
        seen when one always ran right after direct)."""
        targets = list(TARGETS)
        if SECOND in targets and run % 2 == 1:
            a, b = targets.index("voxgate"), targets.index(SECOND)
            targets[a], targets[b] = targets[b], targets[a]
        return targets

    def put(self, figure, target, value):
        self.results.setdefault(figure, {})[target] = value

    def put_runs(self, figure, per, key, scale=1.0):
        """The median of `key` over the runs in `per` (target -> [run result]) as the figure,
        and each run's values kept for the paired ratio."""
        for t, rs in per.items():
            self.put(figure, t, statistics.median(r[key] for r in rs) * scale)
        runs = len(next(iter(per.values())))
        self.per_run[figure] = [{t: per[t][i][key] * scale for t in per} for i in range(runs)]

    def startup(self):
        """Start-to-ready and idle RSS: fresh starts, before the long-lived instances."""
        runs = self.args.start_runs
        for name in PROXIES:
            ready_ms, rss = [], []
            for _ in range(runs):
                t0 = time.perf_counter()
                p = self.start_proxy(name)
                try:
                    wait_ready(self.ports[name], 10.0, 0.0002, p)
                    ready_ms.append((time.perf_counter() - t0) * 1e3)
                    self.procs.note_children(p, tree(p.pid))
                    time.sleep(0.3)
                    rss.append(status_kib(tree(p.pid), "VmRSS"))
                finally:
                    self.procs.stop(p)
            self.put("start-to-ready, ms", name, statistics.median(ready_ms))
            self.put("idle RSS, MiB", name, statistics.median(rss) / 1024)
            log(f"  {name}: ready in {statistics.median(ready_ms):.1f} ms, idle RSS {statistics.median(rss)} KiB")

    def sanity(self):
        """One request of each kind through each target, checked, before any timing; and
        that voxgate with keys refuses a request without one, and limits the one with."""
        port = self.ports[KEYS]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # a 401 closes it
            s.sendall(raw_post(port, SPEECH_PATH, self.bodies["speech"], "application/json"))
            head = s.recv(4096)
        if not head.startswith(b"HTTP/1.1 401 "):
            sys.exit(f"sanity check failed: {KEYS} answered {head[:40]!r} to a request without a key")
        c = Conn(port)
        try:
            for key in CLIENT_KEYS:
                raw = raw_post(port, SPEECH_PATH, self.bodies["speech"], "application/json", key)
                status, n, _, _ = c.request(raw)
                if status != 200 or n != SPEECH_REPLY_BYTES or "x-ratelimit-limit-requests" not in c.headers:
                    sys.exit(f"sanity check failed: {KEYS} with a key: status {status}, {n} bytes, "
                             f"headers {sorted(c.headers)}")
        finally:
            c.close()
        # The Redis column measures Redis only while voxgate uses it: connected now, and no
        # request fell back to local limits (checked again after the phase).
        for _ in range(250):
            if self.shared_state(REDIS).get("up"):
                break
            time.sleep(0.02)
        else:
            sys.exit(f"sanity check failed: {REDIS} never connected to redis-server: {self.shared_state(REDIS)}")
        checks = [
            ("speech", SPEECH_PATH, self.bodies["speech"], "application/json", SPEECH_REPLY_BYTES),
            ("stream", SPEECH_PATH + STREAM_QUERY, self.bodies["speech"], "application/json", STREAM_REPLY_BYTES),
        ]
        for target in TARGETS:
            c = Conn(self.ports[target])
            try:
                for what, path, body, ctype, want in checks + self.fallback_checks(target):
                    status, n, _, _ = c.request(raw_post(self.ports[target], path, body, ctype))
                    if status != 200 or n != want:
                        sys.exit(f"sanity check failed: {what} via {target}: status {status}, {n} bytes")
                with open(os.path.join(self.work, "upload10.multipart"), "rb") as f:
                    body = f.read()
                status, n, _, _ = c.request(raw_post(self.ports[target], UPLOAD_PATH, body, self.multipart_ctype))
                if status != 200:
                    sys.exit(f"sanity check failed: upload via {target}: status {status}")
            finally:
                c.close()

    def shared_state(self, target):
        """`/status`'s policy.shared of a voxgate target."""
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(f"http://127.0.0.1:{self.ports[target]}/status", timeout=10) as r:
            return json.load(r)["policy"]["shared"] or {}

    def fallback_paths(self, target):
        """(503 case, dead case): path and body per target; direct has no fallback."""
        if target == "direct":
            return None
        if target in ("voxgate", SECOND):  # routed by model, on the real path
            return (SPEECH_PATH, self.bodies["fb503"]), (SPEECH_PATH, self.bodies["fbdead"])
        return (("/fb503" + SPEECH_PATH, self.bodies["fb503"]),
                ("/fbdead" + SPEECH_PATH, self.bodies["fbdead"]))

    def fallback_checks(self, target):
        paths = self.fallback_paths(target)
        if not paths:
            return []
        return [(f"fallback {i}", p, b, "application/json", SPEECH_REPLY_BYTES) for i, (p, b) in enumerate(paths)]

    def small_tts(self):
        a = self.args
        targets = TARGETS + [RELOADING, KEYS, REDIS]
        per = {t: [] for t in targets}
        body = os.path.join(self.work, "speech.json")
        for t in TARGETS + [KEYS, REDIS]:  # warm-up: pools filled, caches warm
            self.wrk(t, SPEECH_PATH, body, "application/json", a.conns, 1)
        for run in range(a.runs):
            # Interleaved, so that a noisy moment hits every target alike. Plain voxgate in
            # the middle of its two variants, each of which is right before it in one round
            # and right after it in the next: each pair back to back, neither always
            # following the same neighbour.
            group = ([RELOADING, "voxgate", KEYS, REDIS] if run % 2 == 0
                     else [REDIS, KEYS, "voxgate", RELOADING])
            rest = [t for t in self.order(run) if t not in ("direct", "voxgate")]
            for t in ["direct"] + (group + rest if run % 2 == 0 else rest[:1] + group + rest[1:]):
                r = self.timed(t, SPEECH_PATH, body, "application/json", a.conns, a.seconds)
                per[t].append(r)
                cpu = (f"{r['cpu_us_per_req']:.1f} µs/req (user {r['user_us_per_req']:.1f})"
                       if r["cpu_us_per_req"] else "")
                reloads = f", {r['reloads']} reloads" if "reloads" in r else ""
                log(f"  run {run + 1} {t}: {r['rps']:.0f} req/s p50 {r['p50_us']} µs p99 {r['p99_us']} µs {cpu}{reloads}")
        fallbacks = self.shared_state(REDIS).get("fallbacks", 0)
        if fallbacks:
            self.notes.append(f"{REDIS}: {fallbacks} request(s) fell back to local limits (Redis slower "
                              f"than its 20 ms timeout): that column is not all Redis")
        self.put_runs("small TTS: requests/s", per, "rps")
        self.put_runs("small TTS: p50 latency, ms", per, "p50_us", 1e-3)
        self.put_runs("small TTS: p99 latency, ms", per, "p99_us", 1e-3)
        proxies = {t: rs for t, rs in per.items() if t != "direct"}
        self.put_runs("small TTS: proxy CPU per request, µs", proxies, "cpu_us_per_req")
        self.put_runs("small TTS: of which user space, µs", proxies, "user_us_per_req")

    def ttfb_samples(self, target):
        """Times to first body byte, threads × requests on keep-alive connections."""
        a = self.args
        port = self.ports[target]
        raw = raw_post(port, SPEECH_PATH + STREAM_QUERY, self.bodies["speech"], "application/json")
        samples, failures = [], []
        lock = threading.Lock()

        def worker(i):
            time.sleep(i * 0.05 / a.ttfb_threads)  # staggered, so chunks rarely coincide
            try:
                c = Conn(port)
                try:
                    for _ in range(a.ttfb_requests):
                        status, n, first, _ = c.request(raw)
                        if status != 200 or n != STREAM_REPLY_BYTES:
                            raise HttpError(f"status {status}, {n} bytes")
                        with lock:
                            samples.append(first)
                finally:
                    c.close()
            except (OSError, HttpError) as e:
                with lock:
                    failures.append(str(e))

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.ttfb_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        if failures or len(samples) != a.ttfb_threads * a.ttfb_requests:
            raise RuntimeError(f"streaming via {target} failed: {failures[:3]}")
        return samples

    def streaming(self):
        samples = {t: [] for t in TARGETS}
        for run in range(self.args.runs):
            for t in self.order(run):
                samples[t] += self.ttfb_samples(t)
        for t in TARGETS:
            med = statistics.median(samples[t]) * 1e6
            self.put("streaming TTS: time to first byte, µs", t, med)
            log(f"  {t}: median TTFB {med:.0f} µs over {len(samples[t])} requests")
        base = self.results["streaming TTS: time to first byte, µs"]["direct"]
        for t in PROXIES:
            self.put("streaming TTS: added time to first byte, µs", t,
                     self.results["streaming TTS: time to first byte, µs"][t] - base)

    def uploads(self):
        a = self.args
        body = os.path.join(self.work, "upload10.multipart")
        per = {t: [] for t in TARGETS}
        for t in TARGETS:
            self.wrk(t, UPLOAD_PATH, body, self.multipart_ctype, a.upload_conns, 1)
        for run in range(a.runs):
            for t in self.order(run):
                r = self.timed(t, UPLOAD_PATH, body, self.multipart_ctype, a.upload_conns, a.seconds, peak=True)
                r["mibs"] = r["requests"] * 10 / r["seconds"]
                per[t].append(r)
                peak = f", peak RSS {r['peak_kib'] / 1024:.1f} MiB" if r["peak_kib"] else ""
                log(f"  run {run + 1} {t}: {r['mibs']:.0f} MiB/s ({r['requests']} uploads){peak}")
        self.put_runs("10 MiB uploads ×8: MiB/s", per, "mibs")
        for t in TARGETS:
            if t != "direct":
                self.put("10 MiB uploads ×8: peak RSS, MiB", t,
                         statistics.median(r["peak_kib"] for r in per[t]) / 1024)

    def big_uploads(self):
        a = self.args
        body = os.path.join(self.work, "upload25.multipart")
        per = {t: [] for t in TARGETS}
        for run in range(a.runs):
            for t in self.order(run):
                r = self.timed(t, UPLOAD_PATH, body, self.multipart_ctype, 32, a.big_seconds, peak=True)
                r["mibs"] = r["requests"] * 25 / r["seconds"]
                per[t].append(r)
                peak = f", peak RSS {r['peak_kib'] / 1024:.1f} MiB" if r["peak_kib"] else ""
                log(f"  run {run + 1} {t}: {r['requests']} uploads, {r['mibs']:.0f} MiB/s{peak}")
        for t in TARGETS:
            if t != "direct":
                self.put("25 MiB uploads ×32: peak RSS, MiB", t,
                         statistics.median(r["peak_kib"] for r in per[t]) / 1024)

    def latency_once(self, port, path, body):
        c = Conn(port)
        raw = raw_post(port, path, body, "application/json")
        samples = []
        try:
            for _ in range(self.args.seq_requests):
                status, n, _, total = c.request(raw)
                if status != 200 or n != SPEECH_REPLY_BYTES:
                    raise RuntimeError(f"port {port} {path}: status {status}, {n} bytes")
                samples.append(total)
        finally:
            c.close()
        return statistics.median(samples) * 1e6

    def fallback(self):
        cases = {"plain": [], "503": [], "dead": []}
        per = {t: {k: [] for k in cases} for t in TARGETS}
        for _ in range(self.args.runs):
            for t in TARGETS:
                port = self.ports[t]
                per[t]["plain"].append(self.latency_once(port, SPEECH_PATH, self.bodies["speech"]))
                paths = self.fallback_paths(t)
                if paths:
                    per[t]["503"].append(self.latency_once(port, *paths[0]))
                    per[t]["dead"].append(self.latency_once(port, *paths[1]))
        base = statistics.median(per["direct"]["plain"])
        self.put("one small TTS at a time: latency, µs", "direct", base)
        for t in PROXIES:
            plain = statistics.median(per[t]["plain"])
            self.put("one small TTS at a time: latency, µs", t, plain)
            self.put("fallback from a 503 primary: added latency vs direct, µs", t,
                     statistics.median(per[t]["503"]) - base)
            self.put("fallback from a refusing primary: added latency vs direct, µs", t,
                     statistics.median(per[t]["dead"]) - base)
            log(f"  {t}: plain {plain:.0f} µs, 503 {statistics.median(per[t]['503']):.0f} µs, "
                f"refused {statistics.median(per[t]['dead']):.0f} µs (direct {base:.0f} µs)")

    CACHE_HEADERS = {  # target -> (header, its value on a miss, on a hit)
        CACHED: ("x-voxgate-cache", "miss", "hit"),
        NGINX_CACHED: ("x-cache", "MISS", "HIT"),
    }

    def cache_answer(self, conn, target, raw, want):
        """One request on `conn`; fails unless it is a whole speech answer whose cache
        header says `want` (0: a miss, 1: a hit). Returns the s to its first byte."""
        header, *values = self.CACHE_HEADERS[target]
        status, n, _, _ = conn.request(raw)
        got = conn.headers.get(header)
        if status != 200 or n != SPEECH_REPLY_BYTES or got != values[want]:
            raise RuntimeError(f"{target}: status {status}, {n} bytes, {header}: {got} "
                               f"(wanted 200, {SPEECH_REPLY_BYTES} bytes, {values[want]})")
        return conn.first_byte

    def first_bytes_once(self, target):
        """(times from sending to the first response byte, noise): one request at a time
        on one kept-alive connection, every answer checked to be a hit; noise as in wrk()."""
        port = self.ports[target]
        raw = raw_post(port, SPEECH_PATH, self.bodies["speech"], "application/json")
        pids, core = self.pids(target), self.args.proxy_core
        cpu0, busy0, wall0 = cpu_seconds(pids), core_busy_seconds(core), time.perf_counter()
        c = Conn(port)
        try:
            samples = [self.cache_answer(c, target, raw, 1) for _ in range(self.args.first_byte_requests)]
        finally:
            c.close()
        cpu1, busy1, wall1 = cpu_seconds(pids), core_busy_seconds(core), time.perf_counter()
        return samples, max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / (wall1 - wall0)

    def first_bytes(self, target):
        """first_bytes_once, run again (as timed() does) when others took more than NOISY
        of the proxy core meanwhile: a few ms slice of someone else's is a p99 by itself."""
        samples, noise = self.first_bytes_once(target)
        while noise > self.NOISY and self.reruns_left > 0:
            self.reruns_left -= 1
            log(f"  ({target}: others took {noise:.0%} of the proxy core; first bytes again)")
            again, noise_again = self.first_bytes_once(target)
            self.reruns += 1
            if noise_again < noise:
                samples, noise = again, noise_again
        self.noise.append(noise)
        return samples

    def cache_hits(self):
        """Cache hits: voxgate with [cache] against nginx with proxy_cache, on the same
        speech request. Each is warmed with one request (a miss, answered by the counting
        upstream) and must then answer hits; wrk as in the small-TTS phase, then one
        request at a time for the time to the first response byte, the two in turn first.
        At the end the upstream must have seen the two warm-up requests and nothing else,
        voxgate's /metrics must count one miss, and nginx's log of non-hits one line."""
        a = self.args
        targets = [CACHED, NGINX_CACHED]
        body = os.path.join(self.work, "speech.json")
        upstream = CountingUpstream(self.ports["cache_upstream"])
        try:
            for t in targets:
                self.running[t] = self.start_proxy(t)
            for t in targets:
                wait_ready(self.ports[t], 10.0, proc=self.running[t])
            for warmed, t in enumerate(targets, 1):
                port = self.ports[t]
                raw = raw_post(port, SPEECH_PATH, self.bodies["speech"], "application/json")
                c = Conn(port)
                try:
                    self.cache_answer(c, t, raw, 0)
                    self.cache_answer(c, t, raw, 1)
                finally:
                    c.close()
                if upstream.speech_requests() != warmed:
                    raise RuntimeError(f"{t}: the upstream saw {upstream.speech_requests()} speech "
                                       f"requests after {warmed} warm-up(s)")
            for t in targets:  # warm-up: connections, the cache's pages
                self.wrk(t, SPEECH_PATH, body, "application/json", a.conns, 1)
            per = {t: [] for t in targets}
            firsts = {t: [] for t in targets}  # every sample
            rounds = []  # per round: target -> (median, p99) of its first-byte samples
            served = {t: 0 for t in targets}
            for run in range(a.runs):
                order = targets if run % 2 == 0 else targets[::-1]
                for t in order:
                    r = self.timed(t, SPEECH_PATH, body, "application/json", a.conns, a.seconds)
                    if r["errors"]:
                        raise RuntimeError(f"{t}: {r['errors']} errors under wrk")
                    per[t].append(r)
                    served[t] += r["requests"]
                    log(f"  run {run + 1} {t}: {r['rps']:.0f} req/s p50 {r['p50_us']} µs "
                        f"p99 {r['p99_us']} µs {r['cpu_us_per_req']:.1f} µs/req (user {r['user_us_per_req']:.1f})")
                this = {}
                for t in order:
                    samples = self.first_bytes(t)
                    firsts[t] += samples
                    served[t] += len(samples)
                    this[t] = (statistics.median(samples) * 1e6, percentile(samples, 99) * 1e6)
                    log(f"  run {run + 1} {t}: first byte median {this[t][0]:.0f} µs, p99 {this[t][1]:.0f} µs")
                rounds.append(this)
            self.check_only_warm_ups(upstream, served)
        finally:
            for t in targets:
                if t in self.running:
                    self.procs.stop(self.running.pop(t))
            upstream.stop()
        col = CACHE_FIGURES
        per = {col[t]: rs for t, rs in per.items()}
        self.put_runs("cache hits: requests/s", per, "rps")
        self.put_runs("cache hits: p50 latency, ms", per, "p50_us", 1e-3)
        self.put_runs("cache hits: p99 latency, ms", per, "p99_us", 1e-3)
        self.put_runs("cache hits: proxy CPU per request, µs", per, "cpu_us_per_req")
        self.put_runs("cache hits: of which user space, µs", per, "user_us_per_req")
        for i, figure in enumerate(["cache hits: time to first byte, median, µs",
                                    "cache hits: time to first byte, p99, µs"]):
            for t, samples in firsts.items():
                pooled = statistics.median(samples) if i == 0 else percentile(samples, 99)
                self.put(figure, col[t], pooled * 1e6)
            self.per_run[figure] = [{col[t]: v[i] for t, v in this.items()} for this in rounds]

    def check_only_warm_ups(self, upstream, served):
        """After the timed runs: nothing but the two warm-ups reached the upstream."""
        if upstream.speech_requests() != 2:
            raise RuntimeError(f"the cache phase's upstream saw {upstream.speech_requests()} "
                               f"speech requests; only the 2 warm-ups should have reached it")
        port = self.ports[CACHED]
        misses = metric(port, "voxgate_cache_requests_total", '{result="miss"}')
        hits = metric(port, "voxgate_cache_requests_total", '{result="hit"}')
        # wrk counts only the answers it read whole before its time ran out; voxgate may
        # have answered a few more.
        if misses != 1 or hits < served[CACHED]:
            raise RuntimeError(f"{CACHED}: /metrics counts {misses:.0f} misses and {hits:.0f} hits "
                               f"for 1 warm-up and at least {served[CACHED]} hits served")
        with open(os.path.join(self.work, "nginx-cache-upstream.log")) as f:
            lines = f.read().splitlines()
        if len(lines) != 1 or not lines[0].startswith("MISS POST"):
            raise RuntimeError(f"{NGINX_CACHED}: requests that were not hits: {lines[:5]}")
        log(f"  checked: the upstream saw the 2 warm-ups only; voxgate counts 1 miss and "
            f"{hits:.0f} hits; nginx logged 1 non-hit (its MISS)")

    # -- the table ------------------------------------------------------------------------

    NOISY = 0.15

    # Figures where more is better; for all others less is better.
    HIGHER_IS_BETTER = ("requests/s", "MiB/s")

    def table(self):
        second = [SECOND] if SECOND in TARGETS else []
        rows = [tuple(["figure", "direct", "voxgate", RELOADING, KEYS, REDIS] + second
                      + ["nginx", "haproxy", "voxgate/direct", "voxgate/best peer"])]

        def fmt(v):
            if v is None:
                return "—"
            if abs(v) >= 100:
                return f"{v:,.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.2f}"

        for figure, by in self.results.items():
            higher = any(h in figure for h in self.HIGHER_IS_BETTER)
            added = "added" in figure
            vg = by.get("voxgate")
            peers = [by[p] for p in ("nginx", "haproxy") if by.get(p) is not None]
            best = (max(peers) if higher else min(peers)) if peers else None
            d = by.get("direct")
            r_direct = f"{vg / d:.2f}×" if vg is not None and d and not added else "—"
            if vg is None or best is None:
                r_best = "—"
            elif added and best <= 0:
                r_best = f"{vg - best:+.0f} µs"  # a ratio to zero or less says nothing
            else:
                r_best = f"{vg / best:.2f}×"
            rows.append(tuple([figure, fmt(d), fmt(vg), fmt(by.get(RELOADING)), fmt(by.get(KEYS)),
                               fmt(by.get(REDIS))]
                              + [fmt(by.get(t)) for t in second]
                              + [fmt(by.get("nginx")), fmt(by.get("haproxy")), r_direct, r_best]))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for n, r in enumerate(rows):
            cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
            lines.append("| " + " | ".join(cells) + " |")
            if n == 0:
                lines.append("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
        return "\n".join(lines)

    def paired(self):
        """voxgate / best peer within each run (the peers measured seconds before or after
        voxgate), then the median over the runs: steadier than a ratio of medians on a host
        whose speed changes from one minute to the next."""
        lines = []
        for figure, runs in self.per_run.items():
            higher = any(h in figure for h in self.HIGHER_IS_BETTER)
            ratios = []
            for by in runs:
                peers = [by[p] for p in ("nginx", "haproxy") if by.get(p)]
                if by.get("voxgate") is None or not peers:
                    continue
                ratios.append(by["voxgate"] / (max(peers) if higher else min(peers)))
            if ratios:
                lines.append(f"  {figure:<40} {statistics.median(ratios):.2f}×  "
                             f"(runs {min(ratios):.2f}–{max(ratios):.2f}×)")
        return lines

    def paired_reload(self, other=RELOADING, base="voxgate"):
        """`other` (a reload every second, the second build, …) / `base`, run by run."""
        lines = []
        for figure, runs in self.per_run.items():
            ratios = [by[other] / by[base] for by in runs
                      if by.get(other) and by.get(base)]
            if ratios:
                lines.append(f"  {figure:<40} {statistics.median(ratios):.3f}×  "
                             f"(runs {min(ratios):.3f}–{max(ratios):.3f}×)")
        return lines

    def run(self):
        t0 = time.time()
        self.check_ports_free()
        self.write_inputs()
        try:
            log("upstream: starting bench_upstream on the load core")
            self.start_upstream()
            phases = self.args.phases
            if "e" in phases:
                log("e. start-to-ready and idle RSS (fresh starts)")
                self.startup()
            log("redis: starting redis-server on the load core")
            self.redis = self.procs.start(
                ["taskset", "-c", self.args.load_core, "redis-server", "--port", str(self.ports["redis"]),
                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.work],
                stdout=subprocess.DEVNULL)
            for name in PROXIES + [KEYS, REDIS]:
                self.running[name] = self.start_proxy(name)
            for name in PROXIES + [KEYS, REDIS]:
                wait_ready(self.ports[name], 10.0, proc=self.running[name])
            # HAProxy marks the dead primary down after two failed checks, 500 ms apart.
            time.sleep(1.5)
            log("sanity: one request of each kind through each target")
            self.sanity()
            if "a" in phases:
                log(f"a. small TTS, 32 KiB reply, {self.args.conns} connections, {self.args.runs} × {self.args.seconds} s per target")
                self.small_tts()
            if "b" in phases:
                log("b. streaming TTS, 10 chunks 50 ms apart: time to first byte")
                self.streaming()
            if "c" in phases:
                log(f"c. 10 MiB uploads, {self.args.upload_conns} connections, fallback armed")
                self.uploads()
            if "d" in phases:
                log("d. 25 MiB uploads, 32 connections")
                self.big_uploads()
            if "f" in phases:
                log("f. one request at a time, plain and with a fallback")
                self.fallback()
            if "g" in phases:
                log(f"g. cache hits: voxgate [cache] and nginx proxy_cache, {self.args.conns} connections, "
                    f"then {self.args.first_byte_requests} requests one at a time, {self.args.runs} rounds")
                self.cache_hits()
        except Exception:
            for name in PROXIES + [KEYS, REDIS, CACHED, NGINX_CACHED, "nginx-error", "nginx-cache-error"]:
                path = os.path.join(self.work, f"{slug(name)}.log")
                if os.path.exists(path) and os.path.getsize(path):
                    with open(path, errors="replace") as f:
                        tail = f.readlines()[-5:]
                    log(f"last lines of {name}.log:\n" + "".join(tail))
            raise
        finally:
            self.procs.stop_all()
        order = [
            "small TTS: requests/s", "small TTS: p50 latency, ms", "small TTS: p99 latency, ms",
            "small TTS: proxy CPU per request, µs", "small TTS: of which user space, µs",
            "streaming TTS: time to first byte, µs", "streaming TTS: added time to first byte, µs",
            "10 MiB uploads ×8: MiB/s", "10 MiB uploads ×8: peak RSS, MiB",
            "25 MiB uploads ×32: peak RSS, MiB",
            "idle RSS, MiB", "start-to-ready, ms",
            "one small TTS at a time: latency, µs",
            "fallback from a 503 primary: added latency vs direct, µs",
            "fallback from a refusing primary: added latency vs direct, µs",
            # voxgate with [cache] in the voxgate column, nginx with proxy_cache in nginx's
            "cache hits: requests/s", "cache hits: p50 latency, ms", "cache hits: p99 latency, ms",
            "cache hits: proxy CPU per request, µs", "cache hits: of which user space, µs",
            "cache hits: time to first byte, median, µs", "cache hits: time to first byte, p99, µs",
        ]
        self.results = {k: self.results[k] for k in order if k in self.results}
        print()
        print(self.table())
        print()
        paired = self.paired()
        if paired:
            print("voxgate / best peer, run by run (median of the per-run ratios; cache hits: "
                  "voxgate [cache] / nginx proxy_cache):")
            print("\n".join(paired))
            print()
        builds = self.paired_reload(SECOND)
        if builds:
            print(f"{SECOND} ({self.args.voxgate_b}) / voxgate ({self.args.voxgate}), run by run:")
            print("\n".join(builds))
            print()
        reload = self.paired_reload()
        if reload:
            print("voxgate with a reload every second / without, run by run (median of the per-run ratios):")
            print("\n".join(reload))
            print()
        keys = self.paired_reload(KEYS)
        if keys:
            print("voxgate with client keys and limits / without, run by run (median of the per-run ratios):")
            print("\n".join(keys))
            print()
        shared = self.paired_reload(REDIS)
        if shared:
            print("voxgate with the same limits in Redis / without limits, run by run:")
            print("\n".join(shared))
            print("voxgate with the limits in Redis / in-process, run by run:")
            print("\n".join(self.paired_reload(REDIS, KEYS)))
            print()
        for n in self.notes:
            print(f"note: {n}")
        if self.noise:
            print(f"noise: other processes took {statistics.median(self.noise):.0%} of the proxy core "
                  f"(cpu{self.args.proxy_core}) during the median proxy run, {max(self.noise):.0%} at worst; "
                  f"{self.reruns} noisy run(s) repeated")
        print(f"({time.time() - t0:.0f} s of measuring; medians of {self.args.runs} runs unless the README says otherwise)")
        with open(os.path.join(self.work, "results.json"), "w") as f:
            json.dump({"results": self.results, "per_run": self.per_run, "notes": self.notes,
                       "noise": self.noise}, f, indent=1)
        charts_dir = os.environ.get("BENCH_CHARTS")
        if charts_dir:
            sys.path.insert(0, HERE)
            import charts  # benches/load/charts.py: SVG bar charts, standard library only

            for path in charts.draw(self.results, charts_dir):
                print(f"chart: {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ.get
    p.add_argument("--voxgate", required=True)
    p.add_argument("--voxgate-b", help="a second voxgate build, measured beside the first")
    p.add_argument("--upstream", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--port-base", type=int, default=int(env("BENCH_PORT_BASE", "18400")))
    p.add_argument("--proxy-core", default=env("BENCH_PROXY_CORE", "0"))
    p.add_argument("--load-core", default=env("BENCH_LOAD_CORE", "1"))
    p.add_argument("--runs", type=int, default=int(env("BENCH_RUNS", "3")))
    p.add_argument("--seconds", type=int, default=int(env("BENCH_SECONDS", "5")))
    p.add_argument("--big-seconds", type=int, default=int(env("BENCH_BIG_SECONDS", "4")))
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--upload-conns", type=int, default=8)
    p.add_argument("--ttfb-threads", type=int, default=6)
    p.add_argument("--ttfb-requests", type=int, default=4)
    p.add_argument("--seq-requests", type=int, default=200)
    p.add_argument("--first-byte-requests", type=int, default=2000)
    p.add_argument("--start-runs", type=int, default=5)
    p.add_argument("--voxgate-log", default=env("BENCH_VOXGATE_LOG", "warn"))
    p.add_argument("--phases", default=env("BENCH_PHASES", "abcdefg"),
                   help="the phases to run, by letter (a small TTS … g cache hits); all by default")
    args = p.parse_args()
    args.phases = set(args.phases.replace(",", "").lower())
    if not args.phases or not args.phases <= set("abcdefg"):
        sys.exit("--phases takes letters a to g (BENCH_PHASES=ag: small TTS and cache hits)")
    for n in ("runs", "seconds", "big_seconds"):
        if not 1 <= getattr(args, n) <= 30:
            sys.exit(f"--{n.replace('_', '-')} must be between 1 and 30")
    # SIGTERM (load.sh's trap, a CI timeout) unwinds like Ctrl-C, so every process is ended.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.voxgate_b:
        TARGETS.insert(2, SECOND)
        PROXIES.insert(1, SECOND)
    Bench(args).run()


if __name__ == "__main__":
    main()
