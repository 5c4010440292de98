"""Fixtures for driving the lifecycle step by step: a scripted provider, the tasks it would send, a result server."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apps.ai_providers import registry
from tests.support import media_samples
from tests.support.fake_adapter import FakeAdapter, Script


class SentTasks(list):
    """The Celery messages the lifecycle sent, as (task name, args, countdown), instead of a broker."""

    def run_stores(self) -> int:
        """Do what a store worker would with the store messages sent so far (each once); how many ran."""
        from apps.generations import lifecycle

        stores = [entry for entry in self if entry[0] == "genbox.generation.store"]
        for entry in stores:
            self.remove(entry)
            lifecycle.store(*entry[1])
        return len(stores)


@pytest.fixture
def sent_tasks(monkeypatch):
    from apps.generations import tasks

    sent = SentTasks()

    def recorder(task):
        def apply_async(args=(), countdown=None, **options):
            sent.append((task.name, tuple(args), countdown))

        return apply_async

    for task in (tasks.generation_submit, tasks.generation_store, tasks.generation_run_due):
        monkeypatch.setattr(task, "apply_async", recorder(task))
        monkeypatch.setattr(task, "delay", lambda *args, task=task: sent.append((task.name, args, None)))
    return sent


@pytest.fixture(autouse=True)
def nothing_cached_between_tests():
    """The learned poll schedule and the models are kept per process; each test starts without them."""
    from apps.generations import lifecycle

    for cache in (lifecycle._typical, lifecycle._models):
        cache.clear()
    yield
    for cache in (lifecycle._typical, lifecycle._models):
        cache.clear()


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
