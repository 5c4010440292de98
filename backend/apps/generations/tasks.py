"""Celery tasks: thin wrappers over the lifecycle. Every task takes an asset id and is safe to run twice."""

from celery import shared_task
from django.conf import settings

from . import lifecycle


@shared_task(name="genbox.generation.submit", acks_late=True, ignore_result=True)
def generation_submit(asset_id: int) -> None:
    lifecycle.submit(asset_id)


# A poll may end in streaming a large result into storage, so it gets the store lease as its time limit.
@shared_task(
    name="genbox.generation.poll",
    acks_late=True,
    ignore_result=True,
    soft_time_limit=settings.GENBOX_STORE_LEASE_SECONDS,
    time_limit=settings.GENBOX_STORE_LEASE_SECONDS + 60,
)
def generation_poll(asset_id: int) -> None:
    lifecycle.poll(asset_id)


@shared_task(name="genbox.generation.sweep", ignore_result=True)
def generation_sweep() -> dict[str, int]:
    return lifecycle.sweep()


@shared_task(name="genbox.ping")
def ping(sent_at: float) -> float:
    """Round trip for ``test_celery``: returns what it was given."""
    return sent_at
