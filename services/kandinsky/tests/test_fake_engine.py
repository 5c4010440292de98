"""``fake_engine.FakeEngine``: ``engine.Engine``'s contract without torch, and ``main.py`` serving it without torch.

Needs neither torch nor diffusers, so these run in Genbox's own environment as well
(``python -m pytest tests/test_fake_engine.py`` from ``services/kandinsky``).
"""

import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

import fake_engine
from fake_engine import FakeEngine
from main import LoadError, ModelsNotLoaded, Settings

SERVICE = Path(__file__).resolve().parents[1]
FAST = {"prompt": "a lighthouse", "width": 64, "height": 64, "seed": 3}


def loaded(**knobs) -> FakeEngine:
    engine = FakeEngine(Settings(), task_seconds=0, **knobs)
    engine.load()
    return engine


def picture(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    image.load()
    return image


def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def in_thread(call) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(value=call()), daemon=True)
    thread.start()
    return thread, outcome


def test_main_imports_and_serves_the_fake_engine_without_torch():
    # A fresh interpreter: in this one, other test modules may have imported torch already.
    script = """
import sys, time
import fake_engine, main
from fastapi.testclient import TestClient

with TestClient(main.create_app(main.Settings(), engine=fake_engine.FakeEngine(task_seconds=0))) as client:
    deadline = time.monotonic() + 10
    while not client.get("/health").json()["models_loaded"] and time.monotonic() < deadline:
        time.sleep(0.01)
    response = client.post("/generate", json={"prompt": "a boat", "width": 64, "height": 64})
    assert response.status_code == 200, response.text
print(sorted({"torch", "diffusers", "transformers", "engine"} & set(sys.modules)))
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=SERVICE, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_a_new_engine_is_idle_and_refuses_to_generate():
    engine = FakeEngine(Settings(device="cpu"))

    with pytest.raises(ModelsNotLoaded, match="they have not been loaded yet"):
        engine.generate(**FAST)
    assert (engine.state, engine.loaded, engine.device) == ("idle", False, "cpu")
    assert FakeEngine().device == "cuda"  # "auto" stands for a GPU


@pytest.mark.parametrize("size", [(64, 64), (100, 70), (65, 129), (768, 512)])
def test_txt2img_answers_exactly_the_requested_size(size):
    result = loaded().generate(**{**FAST, "width": size[0], "height": size[1]})

    assert picture(result.png).size == size
    assert (result.width, result.height, result.seed) == (*size, 3)


def test_the_same_request_gives_the_same_bytes_and_any_change_other_bytes():
    engine = loaded()
    first = engine.generate(**FAST).png

    assert engine.generate(**FAST).png == first
    for change in ({"seed": 4}, {"prompt": "a lamp"}, {"negative_prompt": "fog"}, {"num_inference_steps": 7}):
        assert engine.generate(**{**FAST, **change}).png != first, change


def test_without_a_seed_one_is_picked_and_reproduces_the_picture():
    engine = loaded()
    unseeded = engine.generate(**{**FAST, "seed": None})

    assert 0 <= unseeded.seed <= 2**32 - 1
    assert engine.generate(**{**FAST, "seed": unseeded.seed}).png == unseeded.png


def test_img2img_keeps_the_source_size_and_at_strength_zero_answers_the_source():
    engine = loaded()
    source = Image.new("RGB", (50, 30), "white")

    blended = engine.generate(**FAST, source=source, strength=0.5)
    kept = engine.generate(**FAST, source=source, strength=0)

    assert (blended.width, blended.height) == (50, 30)
    assert picture(blended.png).size == (50, 30)
    assert picture(kept.png).getcolors() == [(50 * 30, (255, 255, 255))]
    assert engine.generations[-1].mode == "img2img"


def test_a_failed_load_keeps_its_reason_until_a_load_succeeds():
    engine = FakeEngine(load_error="KANDINSKY_PRIOR=/nowhere: no such directory")

    with pytest.raises(LoadError, match="no such directory"):
        engine.load()
    assert (engine.state, engine.not_loaded_reason()) == ("failed", "KANDINSKY_PRIOR=/nowhere: no such directory")
    with pytest.raises(ModelsNotLoaded, match="no such directory"):
        engine.generate(**FAST)

    engine.load_error = None
    engine.load()
    assert engine.loaded and engine.not_loaded_reason() == ""
    assert engine.loads == 2


def test_release_ends_a_load_and_a_generation_that_have_begun():
    engine = FakeEngine(task_seconds=600, load_seconds=600)
    engine.mark_loading()
    assert engine.not_loaded_reason() == "loading is in progress"

    loading, _ = in_thread(engine.load)
    wait_until(lambda: engine.loads == 1, "the load to begin")
    engine.release()
    loading.join(10)
    assert engine.loaded

    generating, outcome = in_thread(lambda: engine.generate(**FAST))
    wait_until(lambda: engine.generations, "the generation to begin")
    assert engine.generations[-1].outcome == "running"
    engine.release()
    generating.join(10)
    assert picture(outcome["value"].png).size == (64, 64)
    assert engine.generations[-1].outcome == "ok"


def test_directives_fail_the_way_a_real_engine_does():
    engine = loaded()

    with pytest.raises(FakeEngine.out_of_memory_error, match="CUDA out of memory") as oom:
        engine.generate(**{**FAST, "prompt": "a lighthouse [[oom]]"})
    with pytest.raises(RuntimeError, match="^Emulated failure$"):
        engine.generate(**{**FAST, "prompt": "a lighthouse [[FAIL]]"})
    malformed = engine.generate(**{**FAST, "prompt": "a lighthouse [[malformed]]"})

    assert isinstance(oom.value, RuntimeError)  # as torch.OutOfMemoryError is
    assert malformed.png == fake_engine.MALFORMED_BODY
    assert [generation.outcome for generation in engine.generations] == ["oom", "fail", "malformed"]
    assert set(fake_engine.DIRECTIVES) == {"oom", "fail", "malformed", "slow:S"}


def test_slow_directive_replaces_task_seconds():
    engine = loaded()  # task_seconds=0
    thread, outcome = in_thread(lambda: engine.generate(**{**FAST, "prompt": "a lighthouse [[slow:600]]"}))
    wait_until(lambda: engine.generations, "the generation to begin")

    assert engine.generations[-1].outcome == "running"
    engine.release()
    thread.join(10)
    assert outcome["value"].width == 64
