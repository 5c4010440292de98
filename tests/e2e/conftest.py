"""End-to-end fixtures: a real Celery worker and beat (the Procfile's lines), the Kie.ai emulator over HTTP, a
live API server.

The worker is a separate ``celery worker`` process on the same Redis broker and the same (test)
PostgreSQL database as the tests, so everything it does crosses real process and network boundaries.
Tests using it need committed data: they use ``transactional_db`` (via ``live_server``).
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from scripts import procfile
from tests.support.helpers import EMULATOR_KEY, WEBHOOK_KEY

ROOT = Path(__file__).resolve().parents[2]
WORKER_LOG = ROOT / "var" / "test-worker.log"
BEAT_LOG = ROOT / "var" / "test-beat.log"


def _database_url(db: dict) -> str:
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class Worker:
    """The Procfile's ``worker`` and ``beat``, as child processes; the worker can be killed (SIGKILL, like an OOM
    kill) and started again while beat goes on."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.process: subprocess.Popen | None = None
        self.beat: subprocess.Popen | None = None

    def start(self) -> None:
        WORKER_LOG.parent.mkdir(exist_ok=True)
        self.process = procfile.start("worker", env=self.env, output=WORKER_LOG.open("a"))
        if self.beat is None:
            self.beat = procfile.start("beat", env=self.env, output=BEAT_LOG.open("a"))
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        from apps.generations.tasks import ping

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the test worker exited with {self.process.returncode}; see {WORKER_LOG}")
            try:
                ping.delay(1.0).get(timeout=2)
                return
            except Exception:  # not consuming yet
                continue
        raise RuntimeError(f"the test worker did not answer within {timeout} s; see {WORKER_LOG}")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children) with no chance to clean up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        for process in (self.process, self.beat):
            if process and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def kie_emulator():
    from sandbox.kie import KieEmulator

    with KieEmulator(api_key=EMULATOR_KEY, task_seconds=1.0, rate_limit=None, webhook_hmac_key=WEBHOOK_KEY) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, live_server):
    """One worker for the whole run, on the test database, sending callbacks to the live server."""
    from django.conf import settings

    from config.celery import app

    app.connection_for_write().default_channel.client.flushdb()  # nothing left from earlier runs
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(settings.DATABASES["default"]),
        "PUBLIC_BASE_URL": live_server.url,
        "GENBOX_POLL_ERROR_LIMIT": "3",
        "GENBOX_SUBMIT_LEASE_SECONDS": "5",
        "GENBOX_SWEEP_INTERVAL": "1",
        "GENBOX_SAFETY_POLL_SECONDS": "3",
        "PYTHONPATH": f"{ROOT / 'backend'}{os.pathsep}{ROOT}",
        "WORKER_CONCURRENCY": "2",
        "CELERY_BEAT_SCHEDULE": str(ROOT / "var" / "test-celerybeat-schedule"),
    }
    worker = Worker(env)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def kie(transactional_db, kie_emulator, celery_worker, settings):
    """The Kie.ai provider and catalogue, set up as a user would, pointed at the emulator."""
    from django.core.management import call_command

    from apps.ai_providers.models import AIProvider

    kie_emulator.rate_limit = None
    kie_emulator.task_seconds = 1.0
    call_command(
        "setup_kie_ai",
        "--api-key",
        EMULATOR_KEY,
        "--base-url",
        kie_emulator.base_url,
        "--webhook-hmac-key",
        WEBHOOK_KEY,
        stdout=open(os.devnull, "w"),
    )
    return AIProvider.objects.get(name="Kie.ai")
