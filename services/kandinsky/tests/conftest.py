"""Fixtures: tiny saved models, and apps built from the environment the way ``uvicorn main:app`` builds one.

torch and diffusers are imported inside the fixtures only: each test module skips itself first (with
``pytest.importorskip``) when they are missing, and a conftest import error would hide that reason.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterator

import pytest

MODEL_ENV = (
    "KANDINSKY_PRIOR",
    "KANDINSKY_DECODER",
    "KANDINSKY_DEVICE",
    "KANDINSKY_API_KEY",
    "KANDINSKY_LOAD_ON_STARTUP",
)


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def wait_ready(client) -> None:
    wait_until(lambda: client.get("/health").json()["models_loaded"], what="the models to load")


def wait_load_finished(client) -> None:
    """Until the background load has ended, successfully or not."""
    wait_until(lambda: client.app.state.runtime.engine.state in ("ready", "failed"), what="the load to end")


def image_base64(size: tuple[int, int], fmt: str = "PNG", color: str = "teal") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[str, str]:
    """(prior dir, decoder dir), built once per run."""
    from tests.tiny_models import save_tiny_models

    prior, decoder = save_tiny_models(tmp_path_factory.mktemp("kandinsky-models"))
    return str(prior), str(decoder)


@pytest.fixture(scope="session")
def make_client(tiny_models) -> Iterator[Callable[..., object]]:
    """``make_client(**env)`` → a started ``TestClient`` of an app built from the environment: the tiny models
    by default, overridden by ``env`` (``None`` removes a variable). All are closed at the end of the run."""
    from fastapi.testclient import TestClient

    import main

    clients = []

    def factory(**env: str | None) -> TestClient:
        values = {"KANDINSKY_PRIOR": tiny_models[0], "KANDINSKY_DECODER": tiny_models[1], "KANDINSKY_DEVICE": "cpu"}
        values.update(env)
        with pytest.MonkeyPatch.context() as patch:
            for name in MODEL_ENV:
                patch.delenv(name, raising=False)
            for name, value in values.items():
                if value is not None:
                    patch.setenv(name, value)
            app = main.create_app()
        client = TestClient(app)
        client.__enter__()  # runs the lifespan: the background load starts here
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="session")
def client(make_client):
    """One app with the tiny models loaded, shared by the tests that do not change its state."""
    client = make_client()
    wait_ready(client)
    return client
