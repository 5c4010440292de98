"""Celery tasks: thin wrappers over the lifecycle. Every task is safe to run twice."""

from celery import shared_task
from django.conf import settings

from . import lifecycle


@shared_task(name="genbox.generation.submit", acks_late=True, ignore_result=True)
def generation_submit(asset_id: int) -> None:
    lifecycle.submit(asset_id)


# Sent by beat every GENBOX_POLL_TICK_SECONDS, and again at once while a backlog lasts: the due submissions
# and polls, in batches. A tick that waited longer than a few ticks is dropped: a newer one does the same work.
@shared_task(name="genbox.generation.run_due", ignore_result=True)
def generation_run_due() -> dict[str, int]:
    return lifecycle.run_due()


# Streaming a large result into storage may take long: the store lease is its time limit. Sent to
# GENBOX_STORE_QUEUE, with the result URLs (which may carry credentials) in the message only.
@shared_task(
    name="genbox.generation.store",
    acks_late=True,
    ignore_result=True,
    soft_time_limit=settings.GENBOX_STORE_LEASE_SECONDS,
    time_limit=settings.GENBOX_STORE_LEASE_SECONDS + 60,
)
def generation_store(asset_id: int, lease: str, result_urls: list[str]) -> None:
    lifecycle.store(asset_id, lease, result_urls)


@shared_task(name="genbox.generation.sweep", ignore_result=True)
def generation_sweep() -> dict[str, int]:
    return lifecycle.sweep()


@shared_task(name="genbox.ping")
def ping(sent_at: float) -> float:
    """Round trip for ``test_celery``: returns what it was given."""
    return sent_at
