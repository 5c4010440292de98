"""What the local-server emulators (ComfyUI, AUTOMATIC1111) share: a small HTTP server.

Each emulator subclasses ``LocalEmulator`` and implements ``handle(request) -> Reply``; this module binds a
``ThreadingHTTPServer`` in a background thread, parses bodies (JSON, multipart), records every request
(the latest ``REQUESTS_KEPT`` in ``requests``, secrets redacted) and writes replies. A WebSocket upgrade is handed to
``handle_websocket(request, socket)``, with ``WebSocket`` for the server side of the framing (text frames
out, close in). Standard library only, plus Pillow in the emulators themselves; no Django.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
REQUESTS_KEPT = 500


@dataclass
class UploadedFile:
    filename: str
    content_type: str
    content: bytes


@dataclass
class Request:
    """One request as the emulator saw it. ``headers`` keep their names; ``Authorization`` is redacted in
    the recorded copy but readable here through ``authorization``."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    authorization: str = ""
    time: float = 0.0
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)
    status: int = 0  # the HTTP status answered, filled in after handling


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200, **headers: str) -> Reply:
        return cls(status=status, body=json.dumps(value).encode(), headers=headers)

    @classmethod
    def text(cls, value: str, status: int = 200, content_type: str = "text/plain") -> Reply:
        return cls(status=status, body=value.encode(), content_type=content_type)


class WebSocket:
    """The server side of one WebSocket connection: send text frames, notice when the client goes away."""

    def __init__(self, connection: socket.socket):
        self._connection = connection
        self._lock = threading.Lock()
        self.closed = False

    def send_json(self, value: Any) -> bool:
        """Send one text frame; False once the client is gone."""
        payload = json.dumps(value).encode()
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([len(payload)])
        elif len(payload) < 65536:
            header += bytes([126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([127]) + struct.pack("!Q", len(payload))
        with self._lock:
            if self.closed:
                return False
            try:
                self._connection.sendall(header + payload)
                return True
            except OSError:
                self.closed = True
                return False

    def wait_closed(self, timeout: float | None = None) -> None:
        """Read (and discard) client frames until the client closes or hangs up, or ``timeout`` passes."""
        self._connection.settimeout(timeout)
        try:
            while True:
                head = self._connection.recv(2)
                if len(head) < 2 or head[0] & 0x0F == 0x8:  # hang-up or close frame
                    break
                length = head[1] & 0x7F
                if length == 126:
                    length = struct.unpack("!H", self._recv_exactly(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", self._recv_exactly(8))[0]
                self._recv_exactly(length + (4 if head[1] & 0x80 else 0))
        except (OSError, ConnectionError):
            pass
        finally:
            self.close()

    def _recv_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._connection.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                try:
                    self._connection.sendall(b"\x88\x00")
                except OSError:
                    pass


class LocalEmulator:
    """Base of the local-server emulators: subclass and implement ``handle`` (and maybe ``handle_websocket``).

    ``public_base_url`` replaces ``base_url`` in URLs the emulator hands out (a client reaching it through
    another address, e.g. from a container).
    """

    server_version = "Emulator/1.0"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, public_base_url: str | None = None):
        self.host = host
        self.port = port
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        # The latest requests (bodies included), bounded: run_sandbox may run for days.
        self.requests: deque[Request] = deque(maxlen=REQUESTS_KEPT)
        self.lock = threading.RLock()
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    # ---- to implement -------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError

    def handle_websocket(self, request: Request, websocket: WebSocket) -> None:
        """Serve an accepted WebSocket until it closes. By default there is none: ``handle`` answers 404."""
        raise NotImplementedError

    def accepts_websocket(self, request: Request) -> bool:
        return False

    def on_stop(self) -> None:
        """Stop background threads of the subclass."""

    # ---- life cycle ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the emulator is not started")
        return self._base_url

    @property
    def result_base_url(self) -> str:
        return self.public_base_url or self.base_url

    def start(self):
        if self._server is not None:
            raise RuntimeError("the emulator is already started")
        self._server = EmulatorServer((self.host, self.port), self, _Handler)
        bound_host, bound_port = self._server.server_address[:2]
        self.port = int(bound_port)
        shown_host = "127.0.0.1" if bound_host in ("0.0.0.0", "", "::") else str(bound_host)
        self._base_url = f"http://{shown_host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"{type(self).__name__}-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.on_stop()
        server.close()
        if self._thread:
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        """Block until interrupted (for ``run_sandbox``)."""
        try:
            while self._server is not None:
                time.sleep(0.5)
        finally:
            self.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- queries on recorded data -------------------------------------------------------------------

    def recorded(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """Recorded requests, optionally only those with this method and path, in order."""
        with self.lock:
            return [
                request
                for request in self.requests
                if (method is None or request.method == method) and (path is None or request.path == path)
            ]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()


def slow_seconds(directives: dict[str, str | None]) -> float | None:
    """The seconds of a ``[[slow:S]]`` directive, or None when absent or not a finite, non-negative number."""
    try:
        seconds = float(directives.get("slow") or "")
    except ValueError:
        return None
    return seconds if seconds >= 0 and math.isfinite(seconds) else None


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, UploadedFile]]:
    """Text fields and files of a ``multipart/form-data`` body."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    form: dict[str, str] = {}
    files: dict[str, UploadedFile] = {}
    if not message.is_multipart():
        return form, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        content = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = UploadedFile(filename, part.get_content_type(), content)
        else:
            form[name] = content.decode("utf-8", "replace")
    return form, files


class EmulatorServer(ThreadingHTTPServer):
    """The HTTP server of every emulator (Kie.ai's too): it knows its open connections, so ``close`` can drop
    idle keep-alive ones, and it does not look up its own host name (which stalls on a machine without DNS).
    Its handler class must derive from ``TrackedHandler``."""

    daemon_threads = True
    # The default backlog of 5 drops connections under a burst of a few hundred concurrent clients.
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Any, handler: type[BaseHTTPRequestHandler]) -> None:
        self.emulator = emulator
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # clients hanging up are normal here (truncated downloads, stop())
        super().handle_error(request, client_address)

    def close(self) -> None:
        """Stop serving and drop every open connection."""
        self.shutdown()
        self.server_close()
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class TrackedHandler(BaseHTTPRequestHandler):
    """Registers its connection with the ``EmulatorServer`` while it is open."""

    protocol_version = "HTTP/1.1"  # keep-alive: benchmarks would otherwise pay a TCP handshake per request
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle + delayed ACK add ~40 ms each.
    disable_nagle_algorithm = True
    server: EmulatorServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass


class _Handler(TrackedHandler):
    @property
    def server_version(self) -> str:  # type: ignore[override]
        return self.server.emulator.server_version

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests assert on recorded requests
        pass

    def _read_request(self) -> Request:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name: value for name, value in self.headers.items()}
        authorization = headers.pop("Authorization", "")
        if authorization:
            headers["Authorization"] = "<redacted>"
        request = Request(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=headers,
            body=body,
            authorization=authorization,
            time=time.time(),
        )
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("application/json") and body:
            try:
                request.json = json.loads(body)
            except ValueError:
                request.json = None
        elif content_type.startswith("multipart/form-data"):
            request.form, request.files = parse_multipart(content_type, body)
        return request

    def _dispatch(self) -> None:
        emulator = self.server.emulator
        request = self._read_request()
        with emulator.lock:
            emulator.requests.append(request)
        if self.headers.get("Upgrade", "").lower() == "websocket" and emulator.accepts_websocket(request):
            self._upgrade(request)
            return
        try:
            reply = emulator.handle(request)
        except Exception as exc:  # noqa: BLE001 - a bug in the emulator answers 500, like a crashing server
            reply = Reply.json({"error": f"emulator error: {exc!r}"}, status=500)
        request.status = reply.status
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _upgrade(self, request: Request) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        request.status = 101
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        websocket = WebSocket(self.connection)
        try:
            self.server.emulator.handle_websocket(request, websocket)
        finally:
            websocket.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch
