"""Loading, reloading, health and the one-at-a-time rule, on apps of their own."""

import threading
import time

import pytest

pytest.importorskip("torch", reason="torch is not installed: run services/kandinsky/scripts/test.sh")
pytest.importorskip("diffusers", reason="diffusers is not installed: run services/kandinsky/scripts/test.sh")

import engine  # noqa: E402
import main  # noqa: E402
from tests.conftest import wait_load_finished, wait_ready  # noqa: E402

FAST = {"prompt": "a lighthouse", "num_inference_steps": 2, "width": 64, "height": 64}


class Background(threading.Thread):
    """Send one request from another thread and keep its response."""

    def __init__(self, call, *args, **kwargs):
        super().__init__(daemon=True)
        self.call, self.args, self.kwargs = call, args, kwargs
        self.response = None

    def run(self):
        self.response = self.call(*self.args, **self.kwargs)


class Gate:
    """Blocks the decoder's UNet on its first step until released, to hold a generation in the middle."""

    def __init__(self, client):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        unet = client.app.state.runtime.engine.pipelines.decoder.unet
        self.handle = unet.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1
        self.entered.set()
        assert self.release.wait(30), "the test never released the generation"

    def open(self):
        self.release.set()
        self.handle.remove()


def test_health_answers_while_a_generation_runs_and_generations_run_one_at_a_time(make_client):
    client = make_client()
    wait_ready(client)
    gate = Gate(client)
    first = Background(client.post, "/generate", json={**FAST, "seed": 1})
    first.start()
    try:
        assert gate.entered.wait(30), "the generation never reached the UNet"
        started = time.monotonic()
        health = client.get("/health")
        assert time.monotonic() - started < 5
        assert health.status_code == 200
        assert health.json() == {"status": "healthy", "device": "cpu", "models_loaded": True, "busy": True}

        second = Background(client.post, "/generate", json={**FAST, "seed": 2})
        reload = Background(client.post, "/reload")
        second.start()
        reload.start()
        time.sleep(0.5)
        assert gate.calls == 1, "a second generation used the models while the first was running"
        assert second.response is None and reload.response is None, "they should wait for the first generation"
    finally:
        gate.open()
    for thread in (first, second, reload):
        thread.join(60)
    assert first.response.status_code == 200
    assert second.response.status_code == 200
    assert reload.response.json() == {"status": "success", "message": "Models loaded"}
    assert client.get("/health").json()["busy"] is False


def test_reload_loads_the_same_models_again(make_client):
    client = make_client()
    wait_ready(client)
    before = client.post("/generate", json={**FAST, "seed": 11}).content
    response = client.post("/reload")
    assert response.status_code == 200
    assert response.json() == {"status": "success", "message": "Models loaded"}
    assert client.get("/health").json()["models_loaded"] is True
    assert client.post("/generate", json={**FAST, "seed": 11}).content == before


def test_missing_models_answer_503_with_the_reason(make_client, tmp_path):
    missing = str(tmp_path / "no-such-prior")
    client = make_client(KANDINSKY_PRIOR=missing)
    wait_load_finished(client)
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "unhealthy", "device": "cpu", "models_loaded": False, "busy": False}

    response = client.post("/generate", json=FAST)
    assert response.status_code == 503
    assert response.json() == {"detail": f"Models are not loaded: KANDINSKY_PRIOR={missing}: no such directory"}

    reload = client.post("/reload")
    assert reload.status_code == 500
    assert reload.json() == {"status": "error", "message": f"KANDINSKY_PRIOR={missing}: no such directory"}


def test_a_folder_that_is_not_a_pipeline_fails_with_the_loader_message(make_client, tmp_path):
    client = make_client(KANDINSKY_DECODER=str(tmp_path))
    wait_load_finished(client)
    detail = client.post("/generate", json=FAST).json()["detail"]
    assert detail.startswith(f"Models are not loaded: KANDINSKY_DECODER={tmp_path}: ")


def test_generate_answers_503_while_the_models_are_loading(make_client, monkeypatch):
    release = threading.Event()
    real_load = engine.load_pipelines

    def slow_load(*args, **kwargs):
        assert release.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engine, "load_pipelines", slow_load)
    client = make_client()
    try:
        assert client.get("/health").json() == {
            "status": "unhealthy",
            "device": "cpu",
            "models_loaded": False,
            "busy": False,
        }
        response = client.post("/generate", json=FAST)
        assert response.status_code == 503
        assert response.json() == {"detail": "Models are not loaded: loading is in progress"}
    finally:
        release.set()
    wait_ready(client)
    assert client.post("/generate", json=FAST).status_code == 200


def test_without_load_on_startup_the_first_generation_loads_the_models(make_client):
    client = make_client(KANDINSKY_LOAD_ON_STARTUP="false")
    time.sleep(0.2)
    assert client.get("/health").json()["models_loaded"] is False
    response = client.post("/generate", json=FAST)
    assert response.status_code == 200, response.text
    assert client.get("/health").json()["status"] == "healthy"


@pytest.mark.skipif(engine.torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_a_gpu_says_so(make_client):
    client = make_client(KANDINSKY_DEVICE="cuda")
    wait_load_finished(client)
    assert client.get("/health").json()["device"] == "cuda"
    detail = client.post("/generate", json=FAST).json()["detail"]
    assert "KANDINSKY_DEVICE=cuda but torch cannot see a CUDA device" in detail


@pytest.mark.parametrize(
    ("name", "value"), [("KANDINSKY_DEVICE", "gpu"), ("KANDINSKY_LOAD_ON_STARTUP", "maybe")], ids=["device", "load"]
)
def test_malformed_settings_stop_the_app_at_creation(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        main.create_app()


def test_an_unexpected_error_answers_500_generation_failed(client, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(client.app.state.runtime.engine.pipelines, "prior", boom)
    response = client.post("/generate", json=FAST)
    assert response.status_code == 500
    assert response.json() == {"detail": "Generation failed: RuntimeError: the GPU caught fire"}
    assert client.get("/health").json()["busy"] is False


def test_out_of_memory_answers_500_out_of_memory(client, monkeypatch):
    def oom(*args, **kwargs):
        raise engine.torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(client.app.state.runtime.engine.pipelines, "prior", oom)
    response = client.post("/generate", json=FAST)
    assert response.status_code == 500
    assert response.json() == {"detail": "Out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"}
