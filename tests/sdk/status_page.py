"""Drives headless Chromium over its DevTools protocol (CDP), for tests/status_page.rs and
scripts/screenshot-status.sh.

Chromium is started with --remote-debugging-port=0 in a fresh profile; the port it chose
is read from the profile's DevToolsActivePort file, and the page's target is spoken to
over a WebSocket (websocket-client, pinned in requirements.txt). Nothing is downloaded.

Two ways to run it:

  status_page.py serve          commands on stdin, one JSON object a line; one JSON answer
                                a line on stdout (the first is {"ready": true, ...}):
      {"open": URL}                         load URL, wait for the load event
      {"wait": JS, "timeout_ms": N}         evaluate JS every 50 ms until it is truthy
      {"eval": JS}                          evaluate JS once
      {"errors": true}                      what went to the console as an error so far:
                                            console.error, uncaught exceptions, failed
                                            loads, CSP violations
      {"screenshot": PATH}                  write a PNG of the whole page
      {"quit": true}
  status_page.py shot URL PATH [SECONDS]
                                load URL, wait until the page has read voxgate a few
                                times and SECONDS more (0 if not given), write a PNG of
                                it; exit 1 on a console error.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

CANDIDATES = ["chromium", "chromium-browser", "google-chrome"]


def find_chromium():
    explicit = os.environ.get("VOXGATE_CHROMIUM")
    if explicit:
        return explicit
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page, spoken to over CDP."""

    def __init__(self, binary, width=1280, height=1000):
        self.profile = tempfile.mkdtemp(prefix="voxgate-chromium-")
        args = [
            binary,
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        port = self._port()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], suppress_origin=True, timeout=30
        )
        self.next_id = 0
        self.errors = []
        for domain in ["Page", "Runtime", "Log"]:
            self.call(f"{domain}.enable")

    def _port(self):
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace")
                raise RuntimeError(f"chromium exited with {self.process.returncode}: {err}")
            try:
                with open(path) as f:
                    first = f.readline().strip()
                if first:
                    return int(first)
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise RuntimeError("chromium did not open its DevTools port within 30 s")

    def call(self, method, **params):
        self.next_id += 1
        ask = self.next_id
        self.ws.send(json.dumps({"id": ask, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ask:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def _event(self, message):
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(describe(a) for a in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught: {text}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")

    def evaluate(self, js):
        result = self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise RuntimeError(f"evaluating {js!r}: {text}")
        return result.get("result", {}).get("value")

    def open(self, url):
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 20
        while self.evaluate("document.readyState") != "complete" or self.evaluate("location.href") == "about:blank":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not load within 20 s")
            time.sleep(0.05)

    def wait(self, js, timeout_ms):
        start = time.monotonic()
        value = None
        while True:
            value = self.evaluate(js)
            elapsed = (time.monotonic() - start) * 1000
            if value:
                return {"ok": True, "value": value, "ms": round(elapsed, 1)}
            if elapsed > timeout_ms:
                return {"ok": False, "value": value, "ms": round(elapsed, 1)}
            time.sleep(0.05)

    def screenshot(self, path):
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return {"ok": True, "path": path, "bytes": os.path.getsize(path)}

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def die_with_parent():
    """Chromium gets SIGTERM when this driver dies, even by SIGKILL (a failed test kills
    it): no browser is left running."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def describe(arg):
    if "value" in arg:
        return str(arg["value"])
    return arg.get("description", arg.get("type", "?"))


def say(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def start():
    binary = find_chromium()
    if not binary:
        say({"ready": False, "error": "no Chromium found (looked for " + ", ".join(CANDIDATES)
             + "): run scripts/install-test-deps.sh, which installs Debian's chromium"})
        sys.exit(2)
    try:
        return Browser(binary)
    except Exception as e:  # the test shows why the browser could not start
        say({"ready": False, "error": f"{binary} did not start: {e}"})
        sys.exit(2)


def serve():
    browser = start()
    version = browser.call("Runtime.evaluate", expression="navigator.userAgent", returnByValue=True)
    say({"ready": True, "browser": version.get("result", {}).get("value")})
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            command = json.loads(line)
            try:
                if "open" in command:
                    browser.open(command["open"])
                    say({"ok": True})
                elif "wait" in command:
                    say(browser.wait(command["wait"], command.get("timeout_ms", 5000)))
                elif "eval" in command:
                    say({"ok": True, "value": browser.evaluate(command["eval"])})
                elif "errors" in command:
                    browser.evaluate("0")  # takes in the events sent before it
                    say({"ok": True, "errors": browser.errors})
                elif "screenshot" in command:
                    say(browser.screenshot(command["screenshot"]))
                elif "quit" in command:
                    say({"ok": True})
                    return
                else:
                    say({"ok": False, "error": f"unknown command {command}"})
            except Exception as e:
                say({"ok": False, "error": str(e)})
    finally:
        browser.close()


def shot(url, path, seconds):
    browser = start()
    try:
        browser.open(url)
        ready = browser.wait("Number(document.body.dataset.polls) >= 4", 20000)
        if not ready["ok"]:
            print(f"the page did not read voxgate: {ready}", file=sys.stderr)
            return 1
        time.sleep(seconds)
        print(json.dumps(browser.screenshot(path)))
        browser.evaluate("0")
        for error in browser.errors:
            print(f"console error: {error}", file=sys.stderr)
        return 1 if browser.errors else 0
    finally:
        browser.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve()
    elif sys.argv[1:2] == ["shot"] and len(sys.argv) in (4, 5):
        sys.exit(shot(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) == 5 else 0))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
