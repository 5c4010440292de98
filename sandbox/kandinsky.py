"""The Kandinsky 2.2 service of ``services/kandinsky/``, its real FastAPI app, on a fake engine (no torch).

``KandinskyEmulator`` serves ``main.create_app(settings, engine=FakeEngine(...))`` with uvicorn in a
background thread, so what answers is the service itself (validation, auth, errors, loading, the
one-generation-at-a-time lock) and only the pictures are made up: real PNGs of the right size, labelled
SANDBOX, the same bytes for the same seed and body. Failure modes are directives in the prompt, see
``DIRECTIVES`` (the fake engine's). No Django.

Every request is recorded (the latest ``REQUESTS_KEPT``, as ``sandbox.server.Request`` with the
``Authorization`` header redacted), like the other sandbox servers record theirs, and the engine keeps one
``FakeGeneration`` per generation that found the models loaded.

The service is imported from its folder, not installed: see ``_service_module``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import socket
import sys
import threading
import time
from collections import deque
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

import uvicorn

from .server import REQUESTS_KEPT, Request

SERVICE_DIR = Path(__file__).resolve().parent.parent / "services" / "kandinsky"
SERVICE_PACKAGE = "genbox_kandinsky_service"
STOP_SECONDS = 10  # how long stop() waits for requests in flight (a fake generation is released at once)


def _service_module(name: str) -> ModuleType:
    """``services/kandinsky/<name>.py``, imported as ``genbox_kandinsky_service.<name>``.

    The service is not a package: uvicorn runs it from its folder, where its modules import one another by
    their plain names (``main``, ``engine``, ``fake_engine``). Putting that folder on ``sys.path`` would add
    those generic names to this process's ``sys.modules`` (and whichever ``main`` came first would win). So a
    package with a name of its own is made whose ``__path__`` is the folder; modules imported through it have
    ``__package__`` set and import their siblings relatively (see the top of ``fake_engine.py``), so each is
    loaded once, under a name nothing else uses.
    """
    if SERVICE_PACKAGE not in sys.modules:
        spec = importlib.machinery.ModuleSpec(SERVICE_PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [str(SERVICE_DIR)]
        sys.modules[SERVICE_PACKAGE] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"{SERVICE_PACKAGE}.{name}")


service = _service_module("main")  # the service's main.py: create_app, Settings
fake_engine = _service_module("fake_engine")
DIRECTIVES = fake_engine.DIRECTIVES
FakeEngine = fake_engine.FakeEngine


class KandinskyEmulator:
    """The Kandinsky service on ``host``:``port`` (0: a free port) with a fake engine, until ``stop()``. (Named
    like the other sandbox servers, which emulate theirs; this one runs the service itself.)

    ``api_key``: require ``Authorization: Bearer <key>`` (``KANDINSKY_API_KEY``). ``device``: what ``/health``
    reports. ``task_seconds``: how long a generation takes (changeable while running). ``load_seconds`` and
    ``load_error``: the models' load at start-up (and on ``POST /reload``) takes that long and fails with that
    message while it is set (``engine.load_error = None`` fixes it; ``engine.release()`` ends a load still
    running). ``load_on_startup=False``: the first generation loads the models, as
    ``KANDINSKY_LOAD_ON_STARTUP=false`` does.

    ``start()`` returns once the server answers and its start-up load has begun (so ``engine.release()`` ends
    it) and, unless ``load_seconds`` asks for a slow one, ended; ``RuntimeError`` if the app failed to start,
    ``OSError`` if the port is taken. ``base_url`` stays readable after ``stop()``. Also a context manager.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        task_seconds: float = 0.2,
        api_key: str | None = None,
        device: str = "cuda",
        load_seconds: float = 0.0,
        load_error: str | None = None,
        load_on_startup: bool = True,
    ):
        self.host = host
        self.port = port
        self.settings = service.Settings(device=device, api_key=api_key or "", load_on_startup=load_on_startup)
        self.engine = FakeEngine(
            self.settings, task_seconds=task_seconds, load_seconds=load_seconds, load_error=load_error
        )
        self.app = service.create_app(self.settings, engine=self.engine)
        # The latest requests (bodies included), bounded: run_sandbox may run for days.
        self.requests: deque[Request] = deque(maxlen=REQUESTS_KEPT)
        self.lock = threading.RLock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    # ---- life cycle -------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the Kandinsky sandbox is not started")
        return self._base_url

    def start(self) -> KandinskyEmulator:
        if self._server is not None:
            raise RuntimeError("the Kandinsky sandbox is already started")
        # Bound here rather than by uvicorn, so that a taken port raises in the caller and port 0 is known.
        listener = socket.create_server((self.host, self.port), backlog=1024)
        self.port = listener.getsockname()[1]
        shown_host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        self._base_url = f"http://{shown_host}:{self.port}"
        config = uvicorn.Config(
            _Recorder(self.app, self),
            lifespan="on",
            ws="none",  # no WebSocket routes; and no import of the websockets package's implementation
            log_config=None,  # leave the host process's logging alone
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=STOP_SECONDS,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [listener]}, name="KandinskyEmulator-http", daemon=True
        )
        thread.start()
        while not server.started:
            if not thread.is_alive():
                listener.close()
                raise RuntimeError("the Kandinsky service app did not start (see the log)")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        # The app loads the models in a background task once started. Wait until that load has begun (so that
        # engine.release() ends it) and, unless a slow one was asked for, ended: the first request then finds
        # the models loaded.
        deadline = time.monotonic() + STOP_SECONDS
        while self.settings.load_on_startup and time.monotonic() < deadline:
            if self.engine.loads and (self.engine.state != "loading" or self.engine.load_seconds > 0):
                break
            time.sleep(0.005)
        return self

    @property
    def running(self) -> bool:
        """Whether the server's thread is alive (started, and not yet fully stopped)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving; a generation or load still waiting ends at once (``engine.release()``)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        self.engine.release()
        if self._thread is not None:
            self._thread.join(timeout=STOP_SECONDS + 5)

    def __enter__(self) -> KandinskyEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- what the engine and the server saw ----------------------------------------------------------------

    @property
    def task_seconds(self) -> float:
        return self.engine.task_seconds

    @task_seconds.setter
    def task_seconds(self, seconds: float) -> None:
        self.engine.task_seconds = seconds

    @property
    def generations(self) -> list[Any]:
        """The engine's ``FakeGeneration`` records, oldest first."""
        return list(self.engine.generations)

    def recorded(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """Recorded requests, optionally only those with this method and path, in order."""
        with self.lock:
            return [
                request
                for request in self.requests
                if (method is None or request.method == method) and (path is None or request.path == path)
            ]

    def clear(self) -> None:
        """Forget the recorded requests and generations."""
        with self.lock:
            self.requests.clear()
        self.engine.generations.clear()


class _Recorder:
    """ASGI middleware: records each HTTP request (body included) before the app sees it, and its status.

    The body is read whole here and handed to the app as one message; ``/generate`` bodies are a JSON document
    (with at most one base64 picture), so nothing is streamed that could be worth streaming.
    """

    def __init__(self, app: Any, emulator: KandinskyEmulator):
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the app reads that from ``receive`` itself
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        request = _request(scope, body)
        with self.emulator.lock:
            self.emulator.requests.append(request)

        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                request.status = message["status"]
            await send(message)

        await self.app(scope, replay, watch)


def _request(scope: dict, body: bytes) -> Request:
    """A ``sandbox.server.Request`` from an ASGI scope: header names in their usual capitalisation (ASGI
    lower-cases them), ``Authorization`` redacted in ``headers`` but kept in ``authorization``."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = "-".join(part.capitalize() for part in raw_name.decode("latin-1").split("-"))
        headers[name] = raw_value.decode("latin-1")
    authorization = headers.pop("Authorization", "")
    if authorization:
        headers["Authorization"] = "<redacted>"
    request = Request(
        method=scope["method"],
        path=scope["path"],
        query=dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)),
        headers=headers,
        body=body,
        authorization=authorization,
        time=time.time(),
    )
    if headers.get("Content-Type", "").startswith("application/json") and body:
        try:
            request.json = json.loads(body)
        except ValueError:
            request.json = None
    return request
