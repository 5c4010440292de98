"""The generation lifecycle: every rule between a queued generation and a stored file (or a reason why not).

An asset moves through ``Asset.stage``::

    QUEUED ─submit─▶ SUBMITTING ─▶ POLLING ─poll / callback─▶ STORING ─▶ DONE (COMPLETED)
      ▲ rate limited: back to QUEUED, later        any failure ─────────▶ DONE (FAILED + error_message)

The rules:

1. The database is the source of truth. Every move is a conditional UPDATE from the expected stage and a
   worker acts only when it changed the row, so duplicate or late task deliveries do nothing: nothing is
   submitted twice, stored twice, or changed once DONE.
2. Submission is at most once. A worker that dies between sending and saving the task id leaves the
   asset in SUBMITTING; the sweeper fails it after ``GENBOX_SUBMIT_LEASE_SECONDS`` saying so, rather than
   submit again (providers charge per submission). An answer that may have created a task (a timeout
   after sending, an unreadable 2xx) is treated the same way. Definite refusals worth waiting out (429,
   maintenance, 5xx, no connection) go back to QUEUED and are retried with backoff until the deadline.
3. No worker waits for a provider. After each poll the next one is scheduled with a countdown and the
   due time is kept in ``next_poll_at``; intervals start at 2 s and grow with the task's age.
   ``deadline_at`` (the model's timeout) ends it.
4. A callback (``/api/callbacks/<token>/``) makes the asset due at once: the poll that follows reads the
   authoritative result, so a forged or partial callback body can never complete an asset. While a
   callback is expected (``awaits_callback``) only the first poll (at 2 s) is scheduled: after it the sweeper
   sends a sparse safety-net poll whenever ``next_poll_at`` passes (``GENBOX_SAFETY_POLL_SECONDS``, growing
   with the task's age to 5 min), in case the callback is lost.
5. Results are streamed to a temporary file, identified by their bytes (``inspect_media``), then streamed
   to storage; size, type, dimensions and SHA-256 are recorded.
6. The sweeper (Celery beat, every ``GENBOX_SWEEP_INTERVAL`` s) re-enqueues work whose message was lost
   (killed worker, flushed broker), sends the safety-net polls of rule 4, fails what is past its deadline or
   lease, and retries stale stores.
7. Synchronous providers (A1111, the Kandinsky service: ``Adapter.synchronous``) answer the request with
   the picture, so rule 3 cannot hold for them: their submissions go to the GPU queue
   (``GENBOX_GPU_QUEUE``), served with one slot per GPU, and the worker waits up to the model's timeout
   (the submission lease and the task's time limits stretched to match), reading progress meanwhile.
8. What may be queued at all is decided before anything is queued, in ``start.py``: the options against the
   model's ``parameters_schema``, variants (each with its own stored seed), and the img2img rules (the
   source is a PNG, JPEG or WEBP of at most 4096×4096; the output keeps its size unless the model
   ``resizes_source``; a missing denoise is 0.65), so the stored options reproduce the request exactly.
"""

import contextlib
import hashlib
import logging
import random
import re
import tempfile
import threading
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files import File
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.ai_providers.contract import Failed, ProviderError, Running, Source, SourceUnreachable, Succeeded
from apps.ai_providers.http import Download, download
from apps.ai_providers.models import AIModel
from apps.ai_providers.registry import adapter_class, get_adapter
from apps.ai_providers.templating import (
    TemplateError,
    render_request,
)
from apps.assets.media import MediaRejected, inspect_media
from apps.assets.models import Asset
from apps.assets.storage import file_url

logger = logging.getLogger(__name__)

Stage = Asset.Stage
Status = Asset.Status

# A delivery this early is a stale duplicate of one already scheduled.
_DUE_SLACK = timedelta(seconds=1)
# While a poll request is out, the asset is not due (longer than the HTTP timeouts).
_POLL_LEASE = timedelta(seconds=120)
FIRST_POLL_SECONDS = 2.0
POLL_INTERVAL_MIN = 2.0
POLL_INTERVAL_MAX = 10.0
CALLBACK_POLL_INTERVAL_MAX = 300.0
SUBMIT_BACKOFF_MAX = 60.0
# How often a synchronous generation's progress is read from the provider.
SYNC_PROGRESS_SECONDS = 2.0


def _enqueue_submit(asset_id: int, model: AIModel | None, countdown: float | None = None) -> None:
    """Send the submit task: synchronous providers' to the GPU queue, with time limits that fit the model's
    timeout (the global task limits are far shorter than a generation on a GPU)."""
    from .tasks import generation_submit

    queue = submit_queue(model) if model is not None else None
    limits = {}
    if queue is not None:
        limits = {
            "soft_time_limit": model.effective_timeout_seconds + 30,
            "time_limit": model.effective_timeout_seconds + 90,
        }
    generation_submit.apply_async((asset_id,), queue=queue, countdown=countdown, **limits)


def submit_queue(model: AIModel) -> str | None:
    """The queue for a model's submissions: the GPU queue for synchronous providers, else the default one."""
    try:
        synchronous = adapter_class(model.provider.kind).synchronous
    except LookupError:  # no adapter for this kind: the submission fails, saying so
        return None
    if not synchronous:
        return None
    return (model.provider.settings or {}).get("queue") or settings.GENBOX_GPU_QUEUE


# --- Submitting --------------------------------------------------------------------------------------


def submit(asset_id: int) -> None:
    """Render and send the request for a QUEUED asset; see rules 1–2."""
    now = timezone.now()
    claimed = Asset.objects.filter(pk=asset_id, stage=Stage.QUEUED, next_poll_at__lte=now + _DUE_SLACK).update(
        status=Status.PROCESSING,
        stage=Stage.SUBMITTING,
        started_at=Coalesce("started_at", Value(now)),  # the first attempt's time, kept across rate-limit retries
        next_poll_at=now + timedelta(seconds=settings.GENBOX_SUBMIT_LEASE_SECONDS),
        submit_attempts=F("submit_attempts") + 1,
    )
    if not claimed:
        return
    asset = Asset.objects.select_related("ai_model__provider", "parent_asset").get(pk=asset_id)
    model = asset.ai_model
    if model is None or not model.is_active or not model.provider.is_active:
        _fail(asset, "The AI model was removed or deactivated before the generation started.", Stage.SUBMITTING)
        return
    try:
        adapter = get_adapter(model.provider)
        callback_url = None if adapter.synchronous else _callback_url(asset)
        body = render_request(model.request_schema, _context(asset, callback_url, adapter))
    except (LookupError, TemplateError, NotImplementedError, SourceUnreachable) as exc:
        _fail(asset, f"The request for {model.name} could not be built: {exc}", Stage.SUBMITTING)
        return
    except ProviderError as error:  # uploading the source image to the provider failed; nothing was submitted
        _submit_failed(asset, ProviderError(error.message, retryable=error.retryable, retry_after=error.retry_after))
        return
    except Exception as exc:  # reading the source from storage failed (S3 down, file gone); nothing was sent
        logger.exception("asset %s: preparing the request failed", asset.pk)
        _submit_failed(asset, ProviderError(f"The source image could not be read: {exc!r}", retryable=True))
        return

    logger.info("asset %s: submitting to %s (attempt %s)", asset.pk, model.provider.name, asset.submit_attempts)
    if adapter.synchronous:
        _run(asset, model, adapter, body)
        return
    try:
        submitted = adapter.submit(model, body, callback_url=callback_url)
    except ProviderError as error:
        _submit_failed(asset, error)
        return

    now = timezone.now()
    moved = Asset.objects.filter(pk=asset.pk, stage=Stage.SUBMITTING).update(
        stage=Stage.POLLING,
        external_task_id=submitted.task_id,
        submitted_at=now,
        request_payload=redact(body, adapter.secrets() + [asset.callback_token]),
        awaits_callback=submitted.callback_expected,
        next_poll_at=now + timedelta(seconds=FIRST_POLL_SECONDS),
        deadline_at=now + timedelta(seconds=model.effective_timeout_seconds),
        poll_errors=0,
    )
    if not moved:
        logger.error(
            "asset %s: provider task %s accepted after the submission was given up", asset.pk, submitted.task_id
        )
        return
    logger.info("asset %s: submitted, provider task %s", asset.pk, submitted.task_id)
    # Always one early poll: a fast provider's callback can arrive before the task id is saved (and is then
    # ignored), and many tasks are done within seconds.
    _schedule_poll(asset.pk, FIRST_POLL_SECONDS)


def _run(asset: Asset, model: AIModel, adapter, body: dict) -> None:
    """A synchronous provider: the request is the whole generation, so this worker (on the GPU queue) waits.

    The submission lease is stretched to the model's timeout first, so the sweeper does not take a long
    generation for a dead worker; progress is read from the provider meanwhile.
    """
    timeout = model.effective_timeout_seconds
    started = timezone.now()
    if not Asset.objects.filter(pk=asset.pk, stage=Stage.SUBMITTING).update(
        next_poll_at=started + timedelta(seconds=timeout + 60),
        deadline_at=started + timedelta(seconds=timeout),  # the time in the GPU queue does not count
    ):
        return
    try:
        with _progress_reader(asset.pk, adapter):
            result = adapter.run(model, body, timeout=timeout)
    except ProviderError as error:
        _submit_failed(asset, error)
        return
    except SoftTimeLimitExceeded:
        _fail(
            asset,
            f"{model.provider.name} did not answer within {_duration(timeout)}; Genbox stopped waiting (the server "
            "may still be generating).",
            Stage.SUBMITTING,
        )
        return
    except Exception as exc:  # an answer the adapter could not read; the request was sent
        logger.exception("asset %s: %s answered something unreadable", asset.pk, model.provider.name)
        _fail(asset, f"{model.provider.name}: the answer could not be read ({exc!r})", Stage.SUBMITTING)
        return
    moved = Asset.objects.filter(pk=asset.pk, stage=Stage.SUBMITTING).update(
        stage=Stage.POLLING,
        submitted_at=started,
        request_payload=redact(body, adapter.secrets()),
        next_poll_at=timezone.now() + timedelta(seconds=timeout),
    )
    if not moved:
        logger.error("asset %s: %s answered after the generation was given up", asset.pk, model.provider.name)
        return
    if isinstance(result, Failed):
        _fail(asset, result.message, Stage.POLLING)
    else:
        _store(asset, result)


@contextlib.contextmanager
def _progress_reader(asset_id: int, adapter):
    """While a synchronous generation runs, copy the provider's progress onto the asset every few seconds."""
    from django.db import connection

    done = threading.Event()

    def read() -> None:
        try:
            while not done.wait(SYNC_PROGRESS_SECONDS):
                try:
                    progress = adapter.progress()
                except Exception:  # progress is a nicety; the generation's own answer decides
                    continue
                if progress is not None:
                    Asset.objects.filter(pk=asset_id, stage=Stage.SUBMITTING).update(progress=progress)
        finally:
            connection.close()  # this thread's own connection

    reader = threading.Thread(target=read, name=f"progress-{asset_id}", daemon=True)
    reader.start()
    try:
        yield
    finally:
        done.set()
        reader.join(timeout=5)


def _submit_failed(asset: Asset, error: ProviderError) -> None:
    now = timezone.now()
    if error.retryable and not error.ambiguous and now < asset.deadline_at:
        delay = _backoff(asset.submit_attempts, error.retry_after, cap=SUBMIT_BACKOFF_MAX)
        moved = Asset.objects.filter(pk=asset.pk, stage=Stage.SUBMITTING).update(
            status=Status.PENDING,
            stage=Stage.QUEUED,
            next_poll_at=now + timedelta(seconds=delay),
            metadata={**asset.metadata, "last_submit_error": error.message},
        )
        if moved:
            logger.warning("asset %s: %s; submitting again in %.1f s", asset.pk, error.message, delay)
            _enqueue_submit(asset.pk, asset.ai_model, countdown=delay)
        return
    message = error.message
    if error.ambiguous and submit_queue(asset.ai_model):  # a synchronous local server
        message += ". The server may still be generating it, so Genbox did not send it again; generate again."
    elif error.ambiguous:
        message += (
            ". The provider may have accepted the task, so Genbox did not send it again (that could charge twice);"
            " generate again if no result appears."
        )
    elif error.retryable:
        message += f" (still failing after {asset.submit_attempts} attempts)"
    _fail(asset, message, Stage.SUBMITTING)


# --- Following the provider's task -------------------------------------------------------------------


def poll(asset_id: int) -> None:
    """Ask the provider about a POLLING asset that is due; see rules 1, 3 and 5."""
    now = timezone.now()
    asset = Asset.objects.select_related("ai_model__provider").filter(pk=asset_id, stage=Stage.POLLING).first()
    if asset is None or (asset.next_poll_at and asset.next_poll_at > now + _DUE_SLACK):
        return
    if asset.deadline_at and now >= asset.deadline_at:
        _fail_timeout(asset)
        return
    claimed = Asset.objects.filter(pk=asset.pk, stage=Stage.POLLING, next_poll_at=asset.next_poll_at).update(
        next_poll_at=now + _POLL_LEASE, poll_count=F("poll_count") + 1
    )
    if not claimed:
        return
    model = asset.ai_model
    if model is None:
        _fail(asset, "The AI model was deleted while the generation was running.", Stage.POLLING)
        return
    try:
        result = get_adapter(model.provider).poll(model, asset.external_task_id)
    except ProviderError as error:
        _poll_failed(asset, error)
        return
    except Exception as exc:  # an answer the adapter did not expect: counted like an unreadable one
        logger.exception("asset %s: the status query failed unexpectedly", asset.pk)
        _poll_failed(asset, ProviderError(f"{model.provider.name}: unexpected answer ({exc!r})", retryable=True))
        return

    if isinstance(result, Running):
        delay = _poll_delay(asset, now)
        Asset.objects.filter(pk=asset.pk, stage=Stage.POLLING).update(
            progress=result.progress if result.progress is not None else asset.progress,
            poll_errors=0,
            next_poll_at=now + timedelta(seconds=delay),
        )
        if not asset.awaits_callback:  # otherwise the sweeper sends the next one when it is due
            _schedule_poll(asset.pk, delay)
    elif isinstance(result, Failed):
        _fail(asset, result.message, Stage.POLLING)
    elif isinstance(result, Succeeded):
        _store(asset, result)


def _poll_failed(asset: Asset, error: ProviderError) -> None:
    errors = asset.poll_errors + 1
    if not error.retryable or errors >= settings.GENBOX_POLL_ERROR_LIMIT:
        suffix = f" ({errors} failed status queries in a row)" if error.retryable else ""
        _fail(asset, error.message + suffix, Stage.POLLING)
        return
    now = timezone.now()
    delay = _backoff(errors, error.retry_after, cap=POLL_INTERVAL_MAX * 3)
    moved = Asset.objects.filter(pk=asset.pk, stage=Stage.POLLING).update(
        poll_errors=errors,
        next_poll_at=now + timedelta(seconds=delay),
        metadata={**asset.metadata, "last_poll_error": error.message},
    )
    if moved:
        logger.warning("asset %s: %s; asking again in %.1f s", asset.pk, error.message, delay)
        _schedule_poll(asset.pk, delay)


def _poll_delay(asset: Asset, now) -> float:
    """Seconds until the next poll: quick at first, then a growing share of the task's age, with jitter.

    With a callback on its way polling is only a safety net, so it is much sparser.
    """
    age = (now - (asset.submitted_at or now)).total_seconds()
    if asset.awaits_callback:
        delay = min(max(age, settings.GENBOX_SAFETY_POLL_SECONDS), CALLBACK_POLL_INTERVAL_MAX)
    else:
        # The mapping's shape is the adapter's business (ComfyUI's has only an output node); this key is shared.
        cap = (asset.ai_model.response_mapping or {}).get("poll_interval_max") or POLL_INTERVAL_MAX
        delay = min(max(age * 0.5, POLL_INTERVAL_MIN), cap)
    return delay * random.uniform(0.9, 1.1)


def _backoff(attempt: int, retry_after: float | None, *, cap: float) -> float:
    """Exponential backoff with jitter, never shorter than the provider's ``Retry-After``."""
    delay = min(cap, 2.0 * 2 ** max(0, attempt - 1)) * random.uniform(0.8, 1.2)
    return max(delay, retry_after or 0.0)


def _schedule_poll(asset_id: int, delay: float) -> None:
    from .tasks import generation_poll

    generation_poll.apply_async((asset_id,), countdown=delay)


# --- Callbacks ---------------------------------------------------------------------------------------


class CallbackIgnored(Exception):
    """The callback is genuine-looking but about nothing we are waiting for; nothing was changed."""


def handle_callback(token: str, *, headers: dict[str, str], body: bytes) -> Asset:
    """A provider says a task ended: make its asset due for a poll now (rule 4).

    Raises ``Asset.DoesNotExist`` (unknown token), ``CallbackRejected`` (bad signature or body) or
    ``CallbackIgnored`` (finished asset, or a task id that is not this asset's).
    """
    from .tasks import generation_poll

    asset = Asset.objects.select_related("ai_model__provider").get(callback_token=token)
    if asset.stage != Stage.POLLING or asset.ai_model is None:
        raise CallbackIgnored(f"asset {asset.pk} is not waiting for its provider (stage {asset.stage})")
    task_id = get_adapter(asset.ai_model.provider).callback_task_id(asset.ai_model, headers, body)
    if task_id != asset.external_task_id:
        raise CallbackIgnored(f"task {task_id!r} is not asset {asset.pk}'s task")
    if Asset.objects.filter(pk=asset.pk, stage=Stage.POLLING).update(next_poll_at=timezone.now()):
        generation_poll.delay(asset.pk)
    logger.info("asset %s: callback for task %s, polling now", asset.pk, task_id)
    return asset


# --- Storing the result ------------------------------------------------------------------------------


def _store(asset: Asset, result: Succeeded) -> None:
    now = timezone.now()
    metadata = dict(asset.metadata)
    if result.result_urls:
        metadata["result_urls"] = [_strip_query(url) for url in result.result_urls]
    if result.cost:
        metadata["provider_cost"] = result.cost
    if result.details:
        metadata["provider_info"] = result.details
    moved = Asset.objects.filter(pk=asset.pk, stage=Stage.POLLING).update(
        stage=Stage.STORING,
        provider_finished_at=now,
        progress=1.0,
        next_poll_at=now + timedelta(seconds=settings.GENBOX_STORE_LEASE_SECONDS),
        metadata=metadata,
    )
    if not moved:
        return
    label = asset.ai_model.provider.name
    with tempfile.NamedTemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR, prefix="genbox-result-") as spool:
        try:
            if result.content is not None:
                fetched = _spool_content(result.content, spool)
            else:
                headers = get_adapter(asset.ai_model.provider).download_headers()
                fetched = download(
                    label, result.result_urls[0], spool, max_bytes=settings.GENBOX_RESULT_MAX_BYTES, headers=headers
                )
        except ProviderError as error:
            _store_failed(asset, error)
            return
        try:
            info = inspect_media(spool.name, max_image_side=settings.GENBOX_RESULT_MAX_SIDE)
        except MediaRejected as exc:
            _fail(asset, f"{label} returned a result Genbox cannot use: {exc}", Stage.STORING)
            return
        spool.seek(0)
        upload = File(spool)
        upload.content_type = info.mime_type  # the storage's Content-Type: what the bytes are, not what was claimed
        name = asset.file.field.generate_filename(asset, f"result{info.extension}")
        try:
            name = asset.file.storage.save(name, upload)
        except Exception as exc:  # the storage is down: a downloadable result is fetched again later
            logger.exception("asset %s: saving the result to storage failed", asset.pk)
            error = ProviderError(f"Saving the result to storage failed: {exc!r}", retryable=True)
            if result.content is None:
                _store_failed(asset, error)
            else:  # the picture existed only in the provider's answer
                _fail(asset, error.message, Stage.STORING)
            return

    finished = Asset.objects.filter(pk=asset.pk, stage=Stage.STORING).update(
        status=Status.COMPLETED,
        stage=Stage.DONE,
        asset_type=info.asset_type,
        file=name,
        mime_type=info.mime_type,
        file_size=fetched.size,
        width=info.width,
        height=info.height,
        sha256=fetched.sha256,
        error_message="",
        next_poll_at=None,
        finished_at=timezone.now(),
    )
    if not finished:
        asset.file.storage.delete(name)  # another worker finished it first: keep one copy
        return
    logger.info("asset %s: completed, %s bytes of %s stored as %s", asset.pk, fetched.size, info.mime_type, name)


def _spool_content(content: bytes, spool) -> Download:
    spool.write(content)
    spool.flush()
    return Download(content_type="", size=len(content), sha256=hashlib.sha256(content).hexdigest())


def _store_failed(asset: Asset, error: ProviderError) -> None:
    errors = asset.poll_errors + 1
    if error.retryable and errors < settings.GENBOX_POLL_ERROR_LIMIT:
        delay = _backoff(errors, error.retry_after, cap=POLL_INTERVAL_MAX * 3)
        # Back to POLLING: the next poll fetches fresh result URLs and tries the download again.
        moved = Asset.objects.filter(pk=asset.pk, stage=Stage.STORING).update(
            stage=Stage.POLLING, poll_errors=errors, next_poll_at=timezone.now() + timedelta(seconds=delay)
        )
        if moved:
            logger.warning("asset %s: %s; trying again in %.1f s", asset.pk, error.message, delay)
            _schedule_poll(asset.pk, delay)
        return
    _fail(asset, error.message, Stage.STORING)


# --- The sweeper -------------------------------------------------------------------------------------


def sweep(*, batch: int = 500) -> dict[str, int]:
    """Repair what lost messages and dead workers left behind (rule 6). Returns counts per action."""
    from .tasks import generation_poll

    now = timezone.now()
    overdue = now - timedelta(seconds=settings.GENBOX_SWEEP_GRACE)
    counts = {
        "lost_submissions": 0,
        "timed_out": 0,
        "requeued_submits": 0,
        "requeued_polls": 0,
        "safety_polls": 0,
        "restored": 0,
    }

    for asset in Asset.objects.filter(stage=Stage.SUBMITTING, next_poll_at__lt=now)[:batch]:
        counts["lost_submissions"] += _fail(
            asset,
            "The worker stopped while submitting to the provider. The provider may or may not have accepted the "
            "task, so Genbox did not send it again (that could charge twice); generate again if no result appears.",
            Stage.SUBMITTING,
        )
    for asset in Asset.objects.filter(stage__in=[Stage.QUEUED, Stage.POLLING], deadline_at__lt=now)[:batch]:
        counts["timed_out"] += _fail_timeout(asset)
    for asset in Asset.objects.filter(stage=Stage.QUEUED, next_poll_at__lt=overdue).select_related(
        "ai_model__provider"
    )[:batch]:
        # Due again from now: a submission waiting its turn in a busy GPU queue is re-sent once per grace
        # period, not on every sweep.
        if Asset.objects.filter(pk=asset.pk, stage=Stage.QUEUED, next_poll_at=asset.next_poll_at).update(
            next_poll_at=now
        ):
            _enqueue_submit(asset.pk, asset.ai_model)
            counts["requeued_submits"] += 1
    lost_polls = Asset.objects.filter(stage=Stage.POLLING, awaits_callback=False, next_poll_at__lt=overdue)
    for asset_id in lost_polls.values_list("pk", flat=True)[:batch]:
        generation_poll.delay(asset_id)
        counts["requeued_polls"] += 1
    safety_polls = Asset.objects.filter(stage=Stage.POLLING, awaits_callback=True, next_poll_at__lt=now)
    for asset_id in safety_polls.values_list("pk", flat=True)[:batch]:
        generation_poll.delay(asset_id)
        counts["safety_polls"] += 1
    for asset_id in Asset.objects.filter(stage=Stage.STORING, next_poll_at__lt=now).values_list("pk", flat=True)[
        :batch
    ]:
        if Asset.objects.filter(pk=asset_id, stage=Stage.STORING, next_poll_at__lt=now).update(
            stage=Stage.POLLING, next_poll_at=now
        ):
            generation_poll.delay(asset_id)
            counts["restored"] += 1
    if any(counts.values()):
        logger.info("sweep: %s", counts)
    return counts


# --- Helpers -----------------------------------------------------------------------------------------


def _fail(asset: Asset, message: str, *from_stages: str) -> int:
    """Mark the asset FAILED with ``message`` if it is still in one of ``from_stages``; 1 if it was."""
    changed = Asset.objects.filter(pk=asset.pk, stage__in=from_stages).update(
        status=Status.FAILED,
        stage=Stage.DONE,
        error_message=message[:4000],
        next_poll_at=None,
        finished_at=timezone.now(),
    )
    if changed:
        logger.warning("asset %s: failed: %s", asset.pk, message)
    return changed


def _fail_timeout(asset: Asset) -> int:
    if asset.stage == Stage.QUEUED and asset.ai_model and submit_queue(asset.ai_model):
        waited = _duration(settings.GENBOX_GPU_QUEUE_WAIT_SECONDS)
        last = asset.metadata.get("last_submit_error")
        message = (
            f"The generation did not start in time: still waiting for the GPU (GENBOX_GPU_QUEUE_WAIT_SECONDS is "
            f"{waited})" + (f"; the last attempt: {last}" if last else "") + ". It was stopped."
        )
        return _fail(asset, message, asset.stage)
    seconds = asset.ai_model.effective_timeout_seconds if asset.ai_model else None
    limit = f" within {_duration(seconds)}" if seconds else ""
    where = "the provider" if asset.stage == Stage.POLLING else "the queue"
    return _fail(asset, f"The generation did not finish{limit} (still at {where}); it was stopped.", asset.stage)


def _duration(seconds: float) -> str:
    return f"{seconds:g} seconds" if seconds < 120 else f"{seconds / 60:g} minutes"


def _callback_url(asset: Asset) -> str | None:
    if not settings.PUBLIC_BASE_URL:
        return None
    return f"{settings.PUBLIC_BASE_URL}/api/callbacks/{asset.callback_token}/"


def _context(asset: Asset, callback_url: str | None, adapter) -> dict[str, Any]:
    """The variables a request schema may use: built-ins first, then every validated option."""
    context: dict[str, Any] = {
        **asset.generation_config,
        "prompt": asset.prompt_text,
        "negative_prompt": asset.generation_config.get("negative_prompt", ""),
    }
    if callback_url:
        context["callback_url"] = callback_url
    parent = asset.parent_asset
    if parent is not None and parent.file:
        # The source's size unless the options say otherwise (img2img already made them the source's).
        context.setdefault("width", parent.width)
        context.setdefault("height", parent.height)
        context.update(adapter.source_variables(_source(parent, "image")))
        mask_id = asset.metadata.get("mask_asset_id")
        if mask_id:
            mask = Asset.objects.filter(pk=mask_id).first()
            if mask is None or not mask.file:
                raise TemplateError(f"the mask (asset {mask_id}) was deleted before the generation started")
            context.update(adapter.source_variables(_source(mask, "mask")))
    return context


def _source(asset: Asset, role: str) -> Source:
    url = file_url(asset.file.name, expire=settings.GENBOX_SOURCE_URL_EXPIRE)
    return Source(
        role=role,
        filename=asset.file.name.rsplit("/", 1)[-1],
        content_type=asset.mime_type,
        width=asset.width,
        height=asset.height,
        url=url if url.startswith(("http://", "https://")) else None,
        open=lambda: asset.file.open("rb"),
    )


_SECRET_KEYS = re.compile(r"(api[_-]?key|token|secret|password|authorization|signature)", re.IGNORECASE)


def _strip_query(url: str) -> str:
    """Presigned URLs carry credentials in their query string; keep where they point, not the signature."""
    base, sep, _ = url.partition("?")
    return f"{base}?…" if sep else base


_BASE64 = re.compile(r"^(?:data:[\w/+.-]+;base64,)?[A-Za-z0-9+/]+={0,2}$")
# Shorter secrets cannot be cut out of a text without mangling it (a password "pw" in the prompt "a pwny").
_SECRET_MIN_CHARS = 8
_INLINE_FILE_MIN_CHARS = 512


def redact(value: Any, secret_values: list[str]) -> Any:
    """A copy of a request fit to store: secret values, secret-named keys and URL signatures removed, and
    files sent inline (base64) replaced by their size and SHA-256, which still tell two requests apart."""
    secret_values = [s for s in secret_values if len(s) >= _SECRET_MIN_CHARS]
    if isinstance(value, dict):
        return {
            key: "[redacted]" if _SECRET_KEYS.search(str(key)) else redact(item, secret_values)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item, secret_values) for item in value]
    if isinstance(value, str):
        for secret in secret_values:
            value = value.replace(secret, "[redacted]")
        if value.startswith(("http://", "https://")) and "X-Amz-" in value:
            value = _strip_query(value)
        elif len(value) >= _INLINE_FILE_MIN_CHARS and _BASE64.match(value):
            digest = hashlib.sha256(value.encode("ascii")).hexdigest()
            value = f"[base64 file: {len(value) * 3 // 4} bytes, sha256 of the text {digest}]"
        return value
    return value
