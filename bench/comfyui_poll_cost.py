"""What one ComfyUI status query costs a worker: the /history request plus the WebSocket listening.

A prompt still queued behind another costs the /history and /queue requests that show it is not running;
a running one listens up to ``progress_window_seconds`` (default 1 s) for its progress.
Runs against the ComfyUI sandbox over HTTP; no database needed:

    DEBUG=true PYTHONPATH=backend:. .venv/bin/python bench/comfyui_poll_cost.py [--polls 10]
"""

import argparse
import os
import statistics
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from apps.ai_providers.models import AIModel, AIProvider  # noqa: E402
from apps.ai_providers.providers.comfyui.adapter import ComfyUIAdapter  # noqa: E402
from apps.ai_providers.providers.comfyui.presets import comfyui_template_models  # noqa: E402
from apps.ai_providers.templating import render_request  # noqa: E402
from sandbox.comfyui import ComfyUIEmulator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--polls", type=int, default=10)
    polls = parser.parse_args().polls
    with ComfyUIEmulator(task_seconds=polls * 1.5 + 5) as emulator:
        provider = AIProvider(name="bench", kind="comfyui", base_url=emulator.base_url)
        entry = next(m for m in comfyui_template_models() if m["name"] == "SDXL txt2img")
        model = AIModel(provider=provider, **entry)
        adapter = ComfyUIAdapter(provider)
        body = render_request(
            model.request_schema, {"prompt": "bench", "negative_prompt": "", "seed": 1, "width": 64, "height": 64}
        )
        running = adapter.submit(model, body, callback_url=None).task_id
        queued = adapter.submit(model, body, callback_url=None).task_id
        time.sleep(0.5)
        for label, task_id in (("queued", queued), ("running", running)):
            seconds = []
            for _ in range(polls):
                started = time.perf_counter()
                adapter.poll(model, task_id)
                seconds.append(time.perf_counter() - started)
            median, worst = statistics.median(seconds) * 1000, max(seconds) * 1000
            print(f"{label:8} poll: median {median:.0f} ms, max {worst:.0f} ms")


if __name__ == "__main__":
    main()
