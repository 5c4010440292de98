"""Small helpers the tests share: keys the emulators are started with, threads, waiting for an asset."""

import threading
import time
from typing import Any

EMULATOR_KEY = "test-kie-key-0123456789"
WEBHOOK_KEY = "test-webhook-hmac-key"


def in_thread(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``call()`` in a thread; its return value lands in the dict under ``"response"``."""
    result: dict[str, Any] = {}

    def run() -> None:
        result["response"] = call()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def wait_for(asset_id: int, timeout: float = 60.0):
    """The asset once it is COMPLETED or FAILED; fails the test after ``timeout`` seconds."""
    from apps.assets.models import Asset

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        asset = Asset.objects.get(pk=asset_id)
        if asset.status in (Asset.Status.COMPLETED, Asset.Status.FAILED):
            return asset
        time.sleep(0.2)
    raise AssertionError(f"asset {asset_id} still {asset.status}/{asset.stage} after {timeout} s")
