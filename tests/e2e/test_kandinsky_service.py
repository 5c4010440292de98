"""The Kandinsky adapter against the real service (services/kandinsky/), run with uvicorn over HTTP.

The service runs in its own environment (torch, diffusers) on a tiny randomly initialised Kandinsky 2.2 it
builds itself (``tests.tiny_models``). ``make test`` prepares that environment first
(``services/kandinsky/scripts/test.sh``); without it these tests are skipped, saying so.
"""

import io
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from apps.ai_providers.contract import ProviderError
from apps.ai_providers.providers.kandinsky.presets import KANDINSKY_MODELS
from apps.ai_providers.registry import get_adapter
from apps.ai_providers.services import provider_install
from tests.support.adapters import body_for, png

SERVICE = Path(__file__).resolve().parents[2] / "services" / "kandinsky"
PYTHON = SERVICE / ".venv" / "bin" / "python"

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        not PYTHON.exists(), reason="the service's environment is missing: run services/kandinsky/scripts/test.sh"
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    models = tmp_path_factory.mktemp("kandinsky-tiny")
    subprocess.run([PYTHON, "-m", "tests.tiny_models", models], cwd=SERVICE, check=True, capture_output=True)
    port = _free_port()
    env = {
        **os.environ,
        "KANDINSKY_PRIOR": str(models / "prior"),
        "KANDINSKY_DECODER": str(models / "decoder"),
        "KANDINSKY_DEVICE": "cpu",
        "KANDINSKY_API_KEY": "service-key",
    }
    log = open(models / "uvicorn.log", "w")
    process = subprocess.Popen(
        [PYTHON, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=SERVICE,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("models_loaded"):
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None, (models / "uvicorn.log").read_text()
        time.sleep(0.3)
    else:
        pytest.fail("the Kandinsky service did not load its models in 120 s")
    yield url
    process.terminate()
    process.wait(timeout=20)


def test_the_adapter_speaks_the_real_service(service):
    provider, _ = provider_install(
        name="Kandinsky real", kind="kandinsky", base_url=service, api_key="service-key", models=KANDINSKY_MODELS
    )
    adapter = get_adapter(provider)
    txt2img = provider.models.get(name="Kandinsky 2.2")
    img2img = provider.models.get(name="Kandinsky 2.2 img2img")
    fast = {"num_inference_steps": 2, "width": 128, "height": 64}

    text_result = adapter.run(txt2img, body_for(txt2img, adapter, "mountains", seed=7, **fast), timeout=60)
    source = png(200, 120)
    first = adapter.run(img2img, body_for(img2img, adapter, "in snow", seed=11, parent=source, **fast), timeout=60)
    again = adapter.run(img2img, body_for(img2img, adapter, "in snow", seed=11, parent=source, **fast), timeout=60)

    assert Image.open(io.BytesIO(text_result.content)).size == (128, 64)
    assert text_result.details == {"seed": 7}
    assert Image.open(io.BytesIO(first.content)).size == (200, 120)  # the source's size, not 128×64
    assert first.details == {"seed": 11} and first.content == again.content
    assert "Kandinsky 2.2 service ready on cpu" in adapter.check_connection()


def test_the_services_refusals_read_well(service):
    provider, _ = provider_install(
        name="Kandinsky real", kind="kandinsky", base_url=service, api_key="wrong", models=KANDINSKY_MODELS
    )
    model = provider.models.get(name="Kandinsky 2.2")
    adapter = get_adapter(provider)

    with pytest.raises(ProviderError) as refused:
        adapter.run(model, {"prompt": "x"}, timeout=30)
    provider.api_key = "service-key"
    with pytest.raises(ProviderError) as invalid:
        adapter.run(model, {"prompt": "x", "width": 10}, timeout=30)

    assert "401" in refused.value.message and not refused.value.retryable
    assert "422" in invalid.value.message and "width" in invalid.value.message
