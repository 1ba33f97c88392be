"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

No driver package is needed: Chromium reads protocol messages (JSON, NUL-terminated) on file
descriptor 3 and writes its answers and events on 4. :class:`Browser` opens one page, records
every request the page makes (``Network.requestWillBeSent``), every console error, failed load
and uncaught exception, evaluates expressions in the page and takes screenshots.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe"]


class Browser:
    """One Chromium process with one page (a context manager).

    Attributes:
        requests: URLs of every request the page made (the document itself included).
        errors: console errors, failed loads and uncaught exceptions, as text.
    """

    def __init__(self, chromium: str, profile: Path, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.requests: list[str] = []
        self.errors: list[str] = []
        self._events: list[dict[str, Any]] = []
        self._buf = b""
        self._id = 0
        to_child, self._to_chrome = os.pipe()
        self._from_chrome, from_child = os.pipe()

        def fds() -> None:  # in the child: the protocol's descriptors 3 and 4
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self._proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                      pass_fds=(3, 4), preexec_fn=fds,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network", "Runtime", "Page", "Log"):
            self.call(f"{domain}.enable")

    # ------------------------------------------------------------------ protocol
    def _send(self, method: str, params: dict[str, Any] | None, session: str | None) -> int:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        return self._id

    def _pump(self, until: float) -> bool:
        """Reads what Chromium sent; False when nothing came before ``until``."""
        left = until - time.monotonic()
        ready, _, _ = select.select([self._from_chrome], [], [], max(0.0, left))
        if not ready:
            return False
        chunk = os.read(self._from_chrome, 1 << 20)
        if not chunk:
            raise RuntimeError("chromium closed the protocol pipe")
        self._buf += chunk
        while b"\0" in self._buf:
            raw, self._buf = self._buf.split(b"\0", 1)
            msg = json.loads(raw)
            if "method" in msg:
                self._event(msg)
            self._events.append(msg)
        return True

    def _event(self, msg: dict[str, Any]) -> None:
        method, params = msg["method"], msg.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.errors.append("log: " + params["entry"].get("text", ""))
        elif method == "Network.loadingFailed":
            self.errors.append("failed load: " + params.get("errorText", ""))

    def _call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        mid = self._send(method, params, session)
        deadline = time.monotonic() + self.timeout
        while True:
            for i, msg in enumerate(self._events):
                if msg.get("id") == mid:
                    del self._events[i]
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})
            if not self._pump(deadline):
                raise TimeoutError(f"no answer to {method} within {self.timeout} s")

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One protocol command in the page's session; returns its result."""
        return self._call(method, params, self._session)

    # ------------------------------------------------------------------ page
    def open(self, url: str) -> None:
        """Navigates to ``url`` and waits for its load event."""
        self._events = [m for m in self._events if m.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", {"url": url})
        self.wait_for(lambda: any(m.get("method") == "Page.loadEventFired" for m in self._events), "the load event")

    def wait_for(self, done, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self.timeout} s for {what}")
            self._pump(min(deadline, time.monotonic() + 0.2))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values)."""
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression!r} threw {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    def wait_until(self, expression: str) -> None:
        """Waits until a JavaScript expression is truthy."""
        deadline = time.monotonic() + self.timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self.timeout} s for {expression}")
            self._pump(time.monotonic() + 0.1)

    def screenshot(self, path: Path, width: int = 1280, height: int = 2000) -> Path:
        """A PNG of the page's top ``width`` x ``height`` CSS pixels."""
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        time.sleep(0.5)  # let Plotly's responsive plots take the new width
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            os.close(self._to_chrome)
        except OSError:
            pass
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._from_chrome)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
