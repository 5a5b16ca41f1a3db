"""``dreamgym view <dataset-or-run>``: the three.js/WebXR viewer, served on 127.0.0.1 only.

    dreamgym view data/reach                      # recorded episodes (+ the embedded default's dream)
    dreamgym view runs/eval_wm                    # an eval-wm run: its data and checkpoint, real | dream
    dreamgym view data/reach checkpoint=runs/wm   # dream with this checkpoint
    dreamgym view data/reach screenshot=shot.png  # headless Chromium picture of the page, then exit

What is served: ``/`` the page, ``/web/...`` its scripts and the vendored three.js
(``avatars/web``), ``/bundle/...`` the viewer bundle (``bundle``). Nothing else: a path that
leaves either folder (``..``, encoded or not, or a symlink pointing out) gets 403, a missing file
404, a request naming a host other than the loopback 403 (so a web page elsewhere cannot reach the
server through a DNS name pointed at 127.0.0.1). The server binds to 127.0.0.1 and nothing else.
"""

from __future__ import annotations

import errno
import http.server
import mimetypes
import signal
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
HOST = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".bin": "application/octet-stream",
    ".md": "text/plain; charset=utf-8",
    ".png": "image/png",
}


class PortInUseError(OSError):
    """The port asked for is taken on 127.0.0.1."""


class Forbidden(Exception):
    """A request path that tries to leave the folder it names."""


def safe_path(root: Path, url_path: str) -> Path | None:
    """The file under ``root`` that ``url_path`` (already stripped of its route prefix, still
    percent-encoded) names, or None when there is none. Raises ``Forbidden`` for a path that
    would leave ``root``: a ``..`` segment before or after decoding, a backslash, a NUL byte, an
    absolute path, or a symlink resolving outside."""
    decoded = unquote(url_path)
    if "\x00" in decoded or "\\" in decoded or "\\" in url_path:
        raise Forbidden(url_path)
    parts = [p for p in decoded.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or decoded.startswith("/"):
        raise Forbidden(url_path)
    if any(p.startswith(".") for p in parts):  # hidden and temporary files are not served
        return None
    base = root.resolve()
    target = base.joinpath(*parts).resolve() if parts else base
    if not target.is_relative_to(base):
        raise Forbidden(url_path)
    return target if target.is_file() else None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "dreamgym-view"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 -- the http.server protocol
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        host = (self.headers.get("Host") or "").lower()
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        if name not in LOOPBACK_NAMES:
            return self._error(403, f"host {host!r} is not the loopback; open http://{HOST}:{self.server.server_port}/")
        raw = self.path
        if "://" in raw[:16]:  # absolute-form request target: use its path
            raw = urlsplit(raw).path or "/"
        path = raw.split("?", 1)[0].split("#", 1)[0]
        if path in ("/", "/index.html"):
            root, rest = WEB_ROOT, "index.html"
        elif path.startswith("/web/"):
            root, rest = WEB_ROOT, path[len("/web/") :]
        elif path.startswith("/bundle/"):
            root, rest = self.server.bundle_root, path[len("/bundle/") :]
        elif path == "/favicon.ico":
            self.send_response(204)
            self.end_headers()
            return None
        else:
            try:  # a traversal attempt outside any route is still a 403, not a 404
                safe_path(WEB_ROOT, path.lstrip("/"))
            except Forbidden:
                return self._error(403, "path leaves the served folders")
            return self._error(404, "not found")
        try:
            file = safe_path(root, rest)
        except Forbidden:
            return self._error(403, "path leaves the served folder")
        if file is None:
            return self._error(404, "not found")
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES.get(file.suffix, mimetypes.guess_type(file.name)[0] or "application/octet-stream"))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")  # a bundle may be rebuilt between two visits
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if body:
            self.wfile.write(data)
        return None

    def _error(self, code: int, message: str) -> None:
        data = f"{code}: {message}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- the base class's name
        if self.server.verbose:
            super().log_message(format, *args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restarted viewer may bind while old connections linger (TIME_WAIT)

    def __init__(self, port: int, bundle_root: Path, verbose: bool):
        self.bundle_root = Path(bundle_root).resolve()
        self.verbose = verbose
        super().__init__((HOST, int(port)), _Handler)


class ViewerServer:
    """The viewer's HTTP server for one bundle on 127.0.0.1:``port`` (0: any free port).

    Raises ``PortInUseError`` with a message saying so when the port is taken.
    """

    def __init__(self, bundle: str | Path, port: int = 8765, verbose: bool = False):
        if not (Path(bundle) / "viewer.json").is_file():
            raise FileNotFoundError(f"{bundle} is not a viewer bundle (no viewer.json)")
        try:
            self._server = _Server(port, Path(bundle), verbose)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    errno.EADDRINUSE,
                    f"port {port} on {HOST} is already in use (another `dreamgym view`?); stop that, "
                    f"or choose another port with port={int(port) + 1} (port=0 picks a free one)",
                ) from None
            raise
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self) -> ViewerServer:
        """Serve in a background thread (for tests and screenshots); ``close`` stops it."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="dreamgym-view", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run(cfg) -> int:
    """``dreamgym view``: see the module docstring and ``configs/view.yaml``."""
    import torch

    from .bundle import remove_temporary, resolve_bundle

    if not cfg.get("path"):
        raise SystemExit("dreamgym view: give a dataset, an eval-wm run or a viewer bundle, e.g. `dreamgym view data/reach`")
    torch.set_num_threads(int(cfg.threads))
    try:
        resolved = resolve_bundle(
            cfg.path,
            data=cfg.get("data"),
            checkpoint=cfg.get("checkpoint"),
            out=cfg.get("out"),
            split=cfg.split,
            episodes=list(cfg.episodes) if cfg.get("episodes") is not None else None,
            max_episodes=cfg.get("max_episodes"),
            dream_steps=cfg.get("dream_steps"),
            num_steps=cfg.get("num_steps"),  # None: the world model's own sampler
            init_noise=cfg.get("init_noise"),
            seed=int(cfg.seed),
            device=cfg.device,
            rebuild=bool(cfg.rebuild),
            progress=bool(cfg.progress),
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"dreamgym view: {e}") from None
    try:
        try:
            server = ViewerServer(resolved.path, int(cfg.port), verbose=bool(cfg.verbose))
        except PortInUseError as e:
            raise SystemExit(f"dreamgym view: {e.strerror}") from None
        if cfg.get("screenshot"):
            return _screenshot(server, cfg)
        print(f"dreamgym view: serving {resolved.path} at {server.url} (127.0.0.1 only; Ctrl-C to stop)", flush=True)
        if cfg.get("open_browser"):
            import webbrowser

            webbrowser.open(server.url)
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("dreamgym view: stopped", flush=True)
        finally:
            signal.signal(signal.SIGTERM, previous)
            server.close()
        return 0
    finally:
        remove_temporary(resolved)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # stop like Ctrl-C: close the server, delete a temporary bundle


def _screenshot(server: ViewerServer, cfg) -> int:
    from .headless import ChromiumNotFound, HeadlessChromium

    out = Path(cfg.screenshot)
    t0 = time.perf_counter()
    with server:
        try:
            with HeadlessChromium(width=int(cfg.width), height=int(cfg.height)) as browser:
                browser.open(server.url + "?" + _query(cfg))
                browser.wait_for("window.__dreamgymReady === true", timeout=float(cfg.timeout))
                if cfg.get("frame") is not None:
                    browser.evaluate(f"window.__dreamgym.setFrame({int(cfg.frame)})")
                    browser.wait_for(f"window.__dreamgym.renderedFrame === {int(cfg.frame)}", timeout=float(cfg.timeout))
                browser.screenshot(out)
        except ChromiumNotFound as e:
            raise SystemExit(f"dreamgym view: {e}") from None
    print(f"dreamgym view: {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _query(cfg) -> str:
    from urllib.parse import urlencode

    q = {}
    if cfg.get("episode") is not None:
        q["episode"] = str(cfg.episode)
    return urlencode(q)
