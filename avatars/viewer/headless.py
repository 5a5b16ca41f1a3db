"""Headless Chromium, driven over the DevTools protocol on a pipe: open a page, evaluate
JavaScript, wait for a condition, take a screenshot.

Chromium started with ``--remote-debugging-pipe`` reads protocol commands from its file
descriptor 3 and writes replies and events to descriptor 4, each message a JSON object ended by a
NUL byte. That needs no network port, no driver binary and no Python package beyond the standard
library, so it works offline wherever Chromium is installed (Debian: ``apt-get install
chromium``). WebGL runs on SwiftShader, Chromium's CPU renderer.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Quiet, self-contained and CPU-only: no GPU, no sandbox (containers run as root), no background
# traffic, a throw-away profile; WebGL through SwiftShader.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--remote-debugging-pipe",
)


class ChromiumNotFound(RuntimeError):
    """No Chromium executable on this machine."""


class BrowserError(RuntimeError):
    """The browser answered a command with an error, died, or a wait timed out."""


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) executable: ``$CHROMIUM`` if set, else the first on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _high_fd(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered 10 or more (so dup2 onto 3 and 4 cannot clash)."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class HeadlessChromium:
    """One headless Chromium with one page of ``width`` x ``height`` CSS pixels (scale 1).

    Use as a context manager; ``close`` ends the browser and deletes its temporary profile.
    ``console`` collects the page's console messages and uncaught exceptions.
    """

    def __init__(self, width: int = 1280, height: int = 720, executable: str | None = None, timeout: float = 60.0):
        exe = executable or find_chromium()
        if exe is None:
            raise ChromiumNotFound(
                "no Chromium found (looked for $CHROMIUM and "
                + ", ".join(CHROMIUM_NAMES)
                + " on PATH); install it, e.g. `apt-get install chromium` on Debian"
            )
        self.width, self.height, self.timeout = int(width), int(height), float(timeout)
        self.console: list[str] = []
        self._profile = tempfile.mkdtemp(prefix="dreamgym-chromium-")
        to_child_r, to_child_w = (_high_fd(f) for f in os.pipe())
        from_child_r, from_child_w = (_high_fd(f) for f in os.pipe())
        args = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", f"--window-size={self.width},{self.height}", "about:blank"]
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            actions = [
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, devnull, 2),
                (os.POSIX_SPAWN_DUP2, to_child_r, 3),
                (os.POSIX_SPAWN_DUP2, from_child_w, 4),
            ]
            self.pid = os.posix_spawn(exe, args, dict(os.environ), file_actions=actions, setpgroup=0)
        finally:
            os.close(devnull)
            os.close(to_child_r)
            os.close(from_child_w)
        self._out = os.fdopen(to_child_w, "wb", buffering=0)
        self._in = os.fdopen(from_child_r, "rb", buffering=0)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="chromium-devtools", daemon=True)
        self._reader.start()
        self.session: str | None = None
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.send("Runtime.enable", session=True)
            self.send("Page.enable", session=True)
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
                session=True,
            )
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ protocol
    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self._in.read(1 << 16)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                try:
                    message = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                self._dispatch(message)
        with self._lock:  # the browser is gone: wake every waiter
            for q in self._replies.values():
                q.put({"error": {"message": "the browser closed the connection"}})

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            with self._lock:
                q = self._replies.get(message["id"])
            if q is not None:
                q.put(message)
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.console.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: bool = False, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one DevTools command (to the page with ``session``) and return its result."""
        if self._closed:
            raise BrowserError("the browser is closed")
        with self._lock:
            self._next_id += 1
            mid = self._next_id
            q: queue.Queue = queue.Queue()
            self._replies[mid] = q
        message: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        try:
            self._out.write(json.dumps(message).encode() + b"\0")
        except (BrokenPipeError, ValueError):
            raise BrowserError(f"{method}: the browser is gone") from None
        try:
            reply = q.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise BrowserError(f"{method}: no answer from the browser in {self.timeout if timeout is None else timeout:.0f} s") from None
        finally:
            with self._lock:
                self._replies.pop(mid, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    # ------------------------------------------------------------------ page
    def open(self, url: str) -> None:
        """Navigate the page to ``url`` (returns once the navigation is committed)."""
        result = self.send("Page.navigate", {"url": url}, session=True)
        if result.get("errorText"):
            raise BrowserError(f"could not open {url}: {result['errorText']}")

    def evaluate(self, expression: str, user_gesture: bool = False) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited); with
        ``user_gesture`` it runs as if the user had clicked (what entering WebXR asks for)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True, "userGesture": bool(user_gesture)}
        result = self.send("Runtime.evaluate", params, session=True)
        if "exceptionDetails" in result:
            d = result["exceptionDetails"]
            raise BrowserError(f"{expression!r} threw: {d.get('exception', {}).get('description') or d.get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, poll: float = 0.1) -> Any:
        """Evaluate ``expression`` until it is truthy; its value. Raises ``BrowserError`` after
        ``timeout`` seconds, with what the page said on its console."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                said = "\n  ".join(self.console[-20:]) or "(nothing)"
                raise BrowserError(f"waited {timeout:.0f} s for {expression!r}; the page's console said:\n  {said}")
            time.sleep(poll)

    def screenshot(self, path: str | Path | None = None) -> bytes:
        """A PNG of the page as shown; written to ``path`` when given."""
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"])
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
        return data

    # ------------------------------------------------------------------ life
    def close(self) -> None:
        """End the browser (politely, then by signal) and delete its profile."""
        if self._closed:
            return
        try:
            self.send("Browser.close", timeout=5)
        except BrowserError:
            pass
        self._closed = True
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            try:  # its own process group (setpgroup=0): its helper processes go too
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
        try:  # helper processes (renderer, GPU) that outlived the browser
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for f in (self._out, self._in):
            try:
                f.close()
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> HeadlessChromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
