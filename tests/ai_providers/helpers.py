"""Small helpers the provider tests share."""

import threading
from typing import Any


def in_thread(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``call()`` in a thread; its return value lands in the dict under ``"response"``."""
    result: dict[str, Any] = {}

    def run() -> None:
        result["response"] = call()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result
