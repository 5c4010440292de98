"""A worker killed (SIGKILL) with generations in flight: they still finish, nothing is sent or stored twice."""

import time
import uuid

import pytest

from apps.ai_providers.models import AIModel
from apps.assets.models import Asset
from apps.generations import lifecycle

pytestmark = pytest.mark.django_db(transaction=True)


def test_killed_worker_generations_finish_without_duplicates(
    api, box, kie, kie_emulator, celery_worker, bucket, settings
):
    settings.GENBOX_SWEEP_GRACE = 1
    kie_emulator.task_seconds = 3.0
    model = AIModel.objects.get(provider=kie, name="Nano Banana")
    run = uuid.uuid4().hex[:8]
    ids = [
        api.post(
            f"/api/boxes/{box.id}/generate/", {"prompt": f"crash {run} {n}", "ai_model_id": model.id}, format="json"
        ).json()["id"]
        for n in range(8)
    ]
    _wait(lambda: Asset.objects.filter(pk__in=ids, stage=Asset.Stage.POLLING).count() >= 3, "some submitted")

    celery_worker.kill()
    in_flight = Asset.objects.filter(pk__in=ids).exclude(stage=Asset.Stage.DONE).count()
    celery_worker.start()
    _wait(lambda: _sweep_and_count_unfinished(ids) == 0, "all finished", timeout=90)

    assert in_flight > 0, "the kill must have hit generations in flight"
    assets = list(Asset.objects.filter(pk__in=ids))
    completed = [a for a in assets if a.status == Asset.Status.COMPLETED]
    failed = [a for a in assets if a.status == Asset.Status.FAILED]
    assert len(completed) >= 3
    for asset in failed:  # only a submission cut off mid-flight may fail, and it says why
        assert "worker stopped while submitting" in asset.error_message
    for asset in assets:
        sent = [s for s in kie_emulator.submissions() if asset.prompt_text == _prompt_of(s.json)]
        assert len(sent) <= 1, f"{asset.prompt_text} was submitted {len(sent)} times"
        if asset.status == Asset.Status.COMPLETED:
            assert len(sent) == 1
    keys = bucket.list_objects_v2(Bucket=settings.AWS_STORAGE_BUCKET_NAME, Prefix=f"boxes/{box.id}/").get(
        "Contents", []
    )
    assert sorted(o["Key"] for o in keys) == sorted(a.file.name for a in completed)


def _prompt_of(body) -> str | None:
    return ((body or {}).get("input") or {}).get("prompt")


def _sweep_and_count_unfinished(ids) -> int:
    lifecycle.sweep()
    return Asset.objects.filter(pk__in=ids).exclude(stage=Asset.Stage.DONE).count()


def _wait(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for: {what}")
