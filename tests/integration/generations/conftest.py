"""Fixtures for driving the lifecycle step by step: a scripted provider, the tasks it would send, a result server."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apps.ai_providers import registry
from tests.support import media_samples
from tests.support.fake_adapter import FakeAdapter, Script


@pytest.fixture
def sent_tasks(monkeypatch):
    """The Celery messages the lifecycle sends, as (task name, asset id, countdown), instead of a broker."""
    from apps.generations import tasks

    sent = []

    def recorder(task):
        def apply_async(args=(), countdown=None, **options):
            sent.append((task.name, args[0], countdown))

        return apply_async

    for task in (tasks.generation_submit, tasks.generation_poll):
        monkeypatch.setattr(task, "apply_async", recorder(task))
        monkeypatch.setattr(task, "delay", lambda asset_id, task=task: sent.append((task.name, asset_id, None)))
    return sent


@pytest.fixture
def fake_provider(db, monkeypatch, sent_tasks):
    """Provider kinds ``fake`` (asynchronous) and ``fake-sync`` (synchronous) with a fresh script each."""
    monkeypatch.setitem(registry.KINDS, "fake", registry.ProviderKind("Fake", "tests.support.fake_adapter:FakeAdapter"))
    monkeypatch.setitem(
        registry.KINDS,
        "fake-sync",
        registry.ProviderKind("Fake GPU", "tests.support.fake_adapter:SynchronousFakeAdapter"),
    )
    script = Script()
    monkeypatch.setattr(FakeAdapter, "script", script)
    return script


@pytest.fixture
def result_url():
    """A URL serving a small PNG over real HTTP, as a provider's result link does."""
    content = media_samples.png_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/result.png"
    server.shutdown()
    server.server_close()
