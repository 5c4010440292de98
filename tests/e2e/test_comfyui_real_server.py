"""The ComfyUI adapter against a real ComfyUI server, with the weights-free workflow (runs on a CPU).

Set ``COMFYUI_TEST_URL`` (e.g. ``http://127.0.0.1:8188``) to run it: ``COMFYUI_TEST_URL=… make test
ARGS=tests/ai_providers/test_comfyui_real_server.py``. Skipped otherwise; everything else about ComfyUI is
covered against the emulator (test_adapter_contract.py).
"""

import io
import os
import time

import httpx
import pytest
from PIL import Image

from apps.ai_providers.contract import ProviderError, Running, Succeeded
from apps.ai_providers.providers.comfyui.presets import comfyui_template_models
from apps.ai_providers.registry import get_adapter
from apps.ai_providers.services import provider_install
from tests.support.adapters import body_for, png

COMFYUI_TEST_URL = os.environ.get("COMFYUI_TEST_URL", "")

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not COMFYUI_TEST_URL, reason="COMFYUI_TEST_URL is not set (a real ComfyUI server to test)"),
]


class TestRealComfyUI:
    @pytest.fixture
    def setup(self):
        provider, _ = provider_install(
            name="ComfyUI real", kind="comfyui", base_url=COMFYUI_TEST_URL, models=comfyui_template_models()
        )
        return get_adapter(provider), provider.models.get(name="Image scale (no weights)")

    def test_check_connection(self, setup):
        adapter, _ = setup

        assert adapter.check_connection().startswith("ComfyUI ")

    def test_the_weights_free_workflow_keeps_the_source_size(self, setup):
        adapter, model = setup
        body = body_for(model, adapter, "", parent=png(160, 96, color=(30, 160, 90)))

        task_id = adapter.submit(model, body, callback_url=None).task_id
        deadline = time.monotonic() + 120
        result = Running()
        while isinstance(result, Running) and time.monotonic() < deadline:
            time.sleep(0.5)
            result = adapter.poll(model, task_id)

        assert isinstance(result, Succeeded), result
        content = httpx.get(result.result_urls[0], headers=adapter.download_headers()).content
        assert Image.open(io.BytesIO(content)).size == (160, 96)

    def test_a_bad_input_names_node_and_input(self, setup):
        adapter, model = setup
        body = body_for(model, adapter, "", parent=png(32, 32))
        body["2"]["inputs"]["upscale_method"] = "no-such-method"

        with pytest.raises(ProviderError) as caught:
            adapter.submit(model, body, callback_url=None)

        assert "node 2 (ImageScale)" in caught.value.message and "upscale_method" in caught.value.message
