"""``dreamgym live``: the page and the live session on one port (``websockets``' asyncio server).

    dreamgym live                          http://127.0.0.1:8766/  (loopback only)
    dreamgym live host=192.168.1.20        https://192.168.1.20:8766/?token=...  (LAN, for a headset)
    dreamgym live backend=dream save=runs/live_session

Plain HTTP requests get the page (``avatars/web``); ``/live`` upgrades to the WebSocket of
``protocol``. The server binds 127.0.0.1 unless ``host=`` says otherwise. Any other address needs
a secure context for WebXR, so it then serves HTTPS with a self-signed certificate (made on first
use with ``cryptography`` in ``cert_dir``; its SHA-256 fingerprint is printed, to compare with what
the headset's browser shows) and a random session token: a request or WebSocket without
``?token=<token>`` gets 403. ``secure=true`` forces this on 127.0.0.1 too.

A Quest on USB can stay on loopback instead: ``adb reverse tcp:8766 tcp:8766`` makes the headset's
``http://localhost:8766/`` this server (localhost is a secure context, so WebXR works, no
certificate needed).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import mimetypes
import secrets
import ssl
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .protocol import error_message, parse_message

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
WS_PATH = "/live"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _response(status: HTTPStatus, body: bytes, content_type: str = "text/plain; charset=utf-8") -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


class LiveServer:
    """Serves the page and runs one ``LiveSession`` per WebSocket, made by ``make_session()``."""

    def __init__(
        self,
        make_session,
        host: str = "127.0.0.1",
        port: int = 8766,
        secure: bool | None = None,
        cert_dir: str | Path = "~/.dreamgym/live",
        save=None,
    ):
        self.make_session = make_session
        self.host, self.port = host, int(port)
        self.secure = (host not in LOOPBACK) if secure is None else bool(secure)
        self.token = secrets.token_urlsafe(16) if self.secure else None
        self.cert_dir = Path(cert_dir).expanduser()
        self.save = save  # callable(session) run when a session ends, or None
        self.fingerprint: str | None = None
        self.sessions = 0

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.secure:
            return None
        from .certs import ensure_certificate

        cert, key, self.fingerprint = ensure_certificate(self.cert_dir, self.host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        return ctx

    def url(self) -> str:
        scheme = "https" if self.secure else "http"
        q = f"?token={self.token}" if self.token else ""
        return f"{scheme}://{self.host}:{self.port}/live.html{q}"

    def _authorised(self, path: str) -> bool:
        if self.token is None:
            return True
        given = parse_qs(urlsplit(path).query).get("token", [""])[0]
        return hmac.compare_digest(given, self.token)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """403 without the token; the page's files for plain HTTP; None lets ``/live`` upgrade."""
        if not self._authorised(request.path):
            return _response(HTTPStatus.FORBIDDEN, b"403: this live session needs its ?token=... (printed when the server started)\n")
        path = urlsplit(request.path).path
        if path == WS_PATH:
            return (
                None
                if request.headers.get("Upgrade", "").lower() == "websocket"
                else _response(HTTPStatus.BAD_REQUEST, b"/live is a WebSocket\n")
            )
        name = "live.html" if path in ("/", "") else path.lstrip("/")
        file = (WEB_ROOT / name).resolve()
        if WEB_ROOT.resolve() not in file.parents or not file.is_file():
            return _response(HTTPStatus.NOT_FOUND, f"404: {path} not found\n".encode())
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.suffix == ".js":
            kind = "text/javascript"
        return _response(HTTPStatus.OK, file.read_bytes(), kind)

    async def handler(self, ws: ServerConnection) -> None:
        """One session: ``hello``, then a reply per message; a bad message gets a one-line error."""
        session = await asyncio.to_thread(self.make_session)
        self.sessions += 1
        await ws.send(json.dumps(session.hello()))
        try:
            async for raw in ws:
                try:
                    msg = parse_message(raw)
                    if msg["type"] == "bye":
                        break
                    reply = session.frame(msg)
                except ValueError as e:
                    await ws.send(error_message(e))
                    continue
                await ws.send(json.dumps(reply))
        except ConnectionClosed:  # the page went away (closed, reloaded): the session ends here
            pass
        finally:
            if self.save is not None:
                path = await asyncio.to_thread(self.save, session)
                try:
                    await ws.send(json.dumps({"type": "saved", "path": str(path)}))
                except ConnectionClosed:  # the page may be gone already; the session is saved all the same
                    pass

    async def run(self, ready: asyncio.Event | None = None, stop: asyncio.Future | None = None) -> None:
        """Serve until ``stop`` is done (forever when None); sets ``ready`` once listening."""
        async with serve(
            self.handler, self.host, self.port, ssl=self.ssl_context(), process_request=self.process_request, max_size=2**16
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready.set()
            await (stop if stop is not None else asyncio.get_running_loop().create_future())
