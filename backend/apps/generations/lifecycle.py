"""The generation lifecycle: every rule between a queued generation and a stored file (or a reason why not).

An asset moves through ``Asset.stage``, and each stage implies the status clients see (``machine.MOVES``,
``machine.STATUS_OF``)::

    QUEUED ─submit─▶ SUBMITTING ─▶ POLLING ─poll / callback─▶ STORING ─▶ DONE (COMPLETED)
    (PENDING)  ▲     (PROCESSING)   │ synchronous providers ──▶ ▲          any failure ─▶ DONE (FAILED + error_message)
               └─ refused, worth waiting out (429, 5xx, no connection): QUEUED again, later

The rules:

1. The database is the source of truth, and ``machine.py`` is the only way the lifecycle writes an asset
   (``move`` for one, ``move_many`` / ``claim_due`` for a batch in one statement). It moves from the stage
   the caller expects, only while the caller still holds the asset (its lease, ``lease_token``),
   sets the status the new stage implies and says whether it won; a worker acts only when it won. Duplicate or
   late task deliveries therefore do nothing: nothing is submitted twice, stored twice, or changed once DONE,
   and a write can never overwrite a newer event (a callback revokes the lease of a poll in flight).
2. ``due_at`` is when the next step (a submission or a poll) is due; ``lease_until`` is how long the worker
   holding the asset may take. A lease that runs out frees the asset for the sweeper.
3. Submission is at most once. A worker that dies between sending and saving the task id leaves the asset
   in SUBMITTING; the sweeper fails it when its lease runs out (``GENBOX_SUBMIT_LEASE_SECONDS``) saying so,
   rather than submit again (providers charge per submission) — unless the provider called back meanwhile on
   the asset's own callback URL, naming the task: that task is adopted and confirmed by a poll. An answer
   that may have created a task (a timeout after sending, an unreadable 2xx) fails the same way, at once.
   Definite refusals worth waiting out (429, maintenance, 5xx, no connection) go back to QUEUED and are
   retried with backoff until the deadline, the last error and the attempts kept on the asset; a server that
   refuses connections for ``GENBOX_UNREACHABLE_SECONDS`` is given up sooner.
4. No worker waits for a provider, and neither a poll nor an asynchronous provider's submission has a
   message of its own: each step's time is kept in ``due_at``, and beat sends ``run_due`` every
   ``GENBOX_POLL_TICK_SECONDS``, which claims the due submissions and then the due polls in batches (polls
   asked concurrently). The intervals learn each model's typical provider
   time (``_poll_delay``): the first poll comes shortly before it, then they grow from 2 s; a model without a
   history is polled at 2, 4, 8, 16 s… ``deadline_at`` (the model's timeout) ends it.
5. A callback (``/api/callbacks/<token>/``) makes the asset due at once, so the next batch reads the
   authoritative result: an unsigned callback body never completes an asset. A callback whose signature the
   adapter verified may carry the result itself (``Adapter.callback_result``), which then goes to storage
   without a poll. While a callback is expected (``awaits_callback``) polling is a sparse safety net in case
   it is lost: from ``GENBOX_SAFETY_POLL_SECONDS`` or 1.5× the typical time, growing with the task's age to
   5 min.
6. A result to download goes to the store queue (``GENBOX_STORE_QUEUE``) with its URLs in the message only
   (they may carry credentials; the asset keeps them without their query string). Results are streamed to
   a temporary file, identified by their bytes (``inspect_media``), then streamed to storage; size, type,
   dimensions and SHA-256 are recorded. A failing storage is not the provider's fault: saving is retried
   with its own backoff (``store_failures``) until the deadline, and never counts toward
   ``GENBOX_POLL_ERROR_LIMIT``; what users read of it names neither the storage endpoint nor the object key.
7. The sweeper (Celery beat, every ``GENBOX_SWEEP_INTERVAL`` s) re-sends GPU-queue submissions whose message
   was lost (killed worker, flushed broker), fails what is past its deadline, fails submissions whose lease ran out
   (rule 3) and takes back stores whose lease ran out (polled again first: the URLs were in the lost message).
   Batches need no repair: one that dies leaves its assets due, free again when its lease runs out.
8. Synchronous providers (A1111, the Kandinsky service: ``Adapter.synchronous``) answer the request with
   the picture, so rule 4 cannot hold for them: their submissions go to the GPU queue
   (``GENBOX_GPU_QUEUE``), served with one slot per GPU, and the worker waits up to the model's timeout
   (the submission lease and the task's time limits stretched to match), reading progress meanwhile.
9. What may be queued at all is decided before anything is queued, in ``start.py``: the options against the
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
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files import File
from django.db.models import Case, DateTimeField, F, FloatField, Q, Value, When
from django.utils import timezone

from apps.ai_providers import registry
from apps.ai_providers.contract import Failed, ProviderError, Running, Source, SourceUnreachable, Succeeded
from apps.ai_providers.http import Download, download
from apps.ai_providers.models import AIModel
from apps.ai_providers.registry import adapter_class, get_adapter
from apps.ai_providers.templating import TemplateError, render_request
from apps.assets.media import MediaRejected, inspect_media
from apps.assets.models import Asset
from apps.assets.storage import file_url

from .machine import ANY, EXPIRED, FREE, Holder, claim_due, move, move_many, new_lease

logger = logging.getLogger(__name__)

Stage = Asset.Stage
Status = Asset.Status

# A delivery this early is a stale duplicate of one already scheduled.
_DUE_SLACK = timedelta(seconds=1)
# How long one batch of polls may hold its assets (longer than the HTTP timeouts).
_POLL_LEASE = timedelta(seconds=120)
POLL_INTERVAL_MIN = 2.0
POLL_INTERVAL_MAX = 30.0
# The learned schedule (rule 4): the recent runs it looks at, and how many it needs before it trusts them.
TYPICAL_RUNS = 20
TYPICAL_RUNS_MIN = 5
TYPICAL_CACHE = timedelta(seconds=60)
CALLBACK_POLL_INTERVAL_MAX = 300.0
SUBMIT_BACKOFF_MAX = 60.0
# How long one batch keeps submitting before it gives the rest back (each request may take a minute).
SUBMIT_BATCH_SECONDS = 60.0
STORE_BACKOFF_MAX = 120.0
# How often a synchronous generation's progress is read from the provider.
SYNC_PROGRESS_SECONDS = 2.0


def _enqueue_submit(asset_id: int, model: AIModel | None, countdown: float | None = None) -> None:
    """Send the submit task of a synchronous provider's generation to the GPU queue, with time limits that fit
    the model's timeout (the global task limits are far shorter than a generation on a GPU). Asynchronous
    providers' submissions have no message: ``submit_due`` finds them by their due time (rule 4)."""
    from .tasks import generation_submit

    if model is not None and model.provider.kind in asynchronous_kinds():
        return
    queue = submit_queue(model) if model is not None else None
    limits = {}
    if queue is not None:
        limits = {
            "soft_time_limit": model.effective_timeout_seconds + 30,
            "time_limit": model.effective_timeout_seconds + 90,
        }
    generation_submit.apply_async((asset_id,), queue=queue, countdown=countdown, **limits)


def asynchronous_kinds() -> list[str]:
    """The provider kinds whose submissions and polls the batches do (their adapters never wait)."""
    return [kind for kind in registry.KINDS if not adapter_class(kind).synchronous]


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


def submit_due(*, limit: int | None = None) -> int:
    """Submit the QUEUED generations of asynchronous providers that are due, up to ``limit``, one after another
    (rules 1 and 3); how many were claimed. They are claimed in one statement first, so that a batch running
    beside this one takes others."""
    limit = limit or settings.GENBOX_POLL_BATCH
    lease = new_lease()
    until = timezone.now() + timedelta(seconds=settings.GENBOX_SUBMIT_LEASE_SECONDS)
    among = Q(ai_model__provider__kind__in=asynchronous_kinds())
    ids = claim_due(Stage.QUEUED, limit=limit, lease=lease, lease_until=until, among=among)
    started = timezone.now()
    for done, asset_id in enumerate(ids):
        if (timezone.now() - started).total_seconds() > SUBMIT_BATCH_SECONDS:
            # A slow provider: give back what this batch has not started, for the next one (or another worker).
            move_many(ids[done:], Stage.QUEUED, Stage.QUEUED, held_by=lease)
            return done
        try:
            submit(asset_id, claimed_by=lease)
        except SoftTimeLimitExceeded:
            raise  # the task's time is up: the rest go back when this batch's lease ends
        except Exception:  # one generation's surprise must not hold back the rest of the batch
            logger.exception("asset %s: submitting failed unexpectedly", asset_id)
    return len(ids)


def submit(asset_id: int, *, claimed_by: str | None = None) -> None:
    """Render and send the request for a QUEUED asset that is due, or that a batch claimed (``claimed_by``, its
    lease); see rules 1 and 3."""
    asset = Asset.objects.filter(pk=asset_id).only(*_SUBMIT_FIELDS).first()
    if asset is None:
        return
    asset.ai_model = current_model(asset.ai_model_id)
    now = timezone.now()
    lease = new_lease()
    if not move(
        asset,
        Stage.QUEUED,
        Stage.SUBMITTING,
        held_by=claimed_by or FREE,
        due_by=None if claimed_by else now + _DUE_SLACK,
        where={"submit_attempts": asset.submit_attempts},  # every claim counts one: nobody claimed it since
        lease_token=lease,
        lease_until=now + timedelta(seconds=settings.GENBOX_SUBMIT_LEASE_SECONDS),
        due_at=None,
        started_at=asset.started_at or now,  # the first attempt's time, kept across retries
        submit_attempts=asset.submit_attempts + 1,
    ):
        return
    model = asset.ai_model
    if model is None or not model.is_active or not model.provider.is_active:
        _fail(asset, "The AI model was removed or deactivated before the generation started.", held_by=lease)
        return
    try:
        adapter = get_adapter(model.provider)
        callback_url = None if adapter.synchronous else _callback_url(asset)
        body = render_request(model.request_schema, _context(asset, callback_url, adapter))
    except (LookupError, TemplateError, NotImplementedError, SourceUnreachable) as exc:
        _fail(asset, f"The request for {model.name} could not be built: {exc}", held_by=lease)
        return
    except ProviderError as error:  # uploading the source image to the provider failed; nothing was submitted
        nothing_sent = ProviderError(
            error.message, retryable=error.retryable, retry_after=error.retry_after, unreachable=error.unreachable
        )
        _submit_failed(asset, lease, nothing_sent)
        return
    except Exception:  # reading the source from storage failed (S3 down, file gone); nothing was sent
        logger.exception("asset %s: preparing the request failed", asset.pk)
        _submit_failed(asset, lease, ProviderError("The source image could not be read from storage", retryable=True))
        return

    logger.info("asset %s: submitting to %s (attempt %s)", asset.pk, model.provider.name, asset.submit_attempts)
    if adapter.synchronous:
        _run(asset, lease, model, adapter, body)
        return
    try:
        submitted = adapter.submit(model, body, callback_url=callback_url)
    except ProviderError as error:
        _submit_failed(asset, lease, error)
        return

    now = timezone.now()
    first_poll = now + timedelta(seconds=_poll_delay(asset, now, awaits_callback=submitted.callback_expected))
    accepted = {
        "external_task_id": submitted.task_id,
        "submitted_at": now,
        "request_payload": redact(body, adapter.secrets() + [asset.callback_token]),
        "awaits_callback": submitted.callback_expected,
        "deadline_at": now + timedelta(seconds=model.effective_timeout_seconds),
        "poll_failures_in_a_row": 0,
        "last_error": "",
        "unreachable_since": None,
    }
    # The first poll at its usual time, unless the provider called back while this was being sent (the
    # callback left the task id): then at once.
    if not move(
        asset,
        Stage.SUBMITTING,
        Stage.POLLING,
        held_by=lease,
        where={"external_task_id": ""},
        due_at=first_poll,
        **accepted,
    ) and not move(asset, Stage.SUBMITTING, Stage.POLLING, held_by=lease, due_at=now, **accepted):
        logger.error(
            "asset %s: provider task %s accepted after the submission was given up", asset.pk, submitted.task_id
        )
        return
    logger.info("asset %s: submitted, provider task %s", asset.pk, submitted.task_id)


def _run(asset: Asset, lease: str, model: AIModel, adapter, body: dict) -> None:
    """A synchronous provider: the request is the whole generation, so this worker (on the GPU queue) waits.

    The lease is stretched to the model's timeout first, so the sweeper does not take a long generation for
    a dead worker; progress is read from the provider meanwhile.
    """
    timeout = model.effective_timeout_seconds
    started = timezone.now()
    lease_until = started + timedelta(seconds=timeout + 60)
    # The first run gets the model's full timeout, the time in the GPU queue not counted; retries must fit in it.
    deadline = started + timedelta(seconds=timeout) if asset.submit_attempts == 1 else asset.deadline_at
    if not move(
        asset,
        Stage.SUBMITTING,
        Stage.SUBMITTING,
        held_by=lease,
        lease_token=lease,
        lease_until=lease_until,
        deadline_at=deadline,
    ):
        return
    try:
        with _progress_reader(asset.pk, lease, lease_until, adapter):
            result = adapter.run(model, body, timeout=timeout)
    except ProviderError as error:
        _submit_failed(asset, lease, error)
        return
    except SoftTimeLimitExceeded:
        _fail(
            asset,
            f"{model.provider.name} did not answer within {_duration(timeout)}; Genbox stopped waiting (the server "
            "may still be generating).",
            held_by=lease,
        )
        return
    except Exception as exc:  # an answer the adapter could not read; the request was sent
        logger.exception("asset %s: %s answered something unreadable", asset.pk, model.provider.name)
        _fail(asset, f"{model.provider.name}: the answer could not be read ({exc!r})", held_by=lease)
        return
    recorded = {"submitted_at": started, "request_payload": redact(body, adapter.secrets())}
    if isinstance(result, Failed):
        _fail(asset, result.message, held_by=lease, **recorded)
        return
    store_lease = _begin_store(asset, result, held_by=lease, **recorded)
    if store_lease is not None and result.content is not None:
        _finish_store(asset, store_lease, result)


@contextlib.contextmanager
def _progress_reader(asset_id: int, lease: str, lease_until, adapter):
    """While a synchronous generation runs, copy the provider's progress onto the asset every few seconds
    (on behalf of the lease holder, which keeps its lease)."""
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
                    move(
                        Asset(pk=asset_id),
                        Stage.SUBMITTING,
                        Stage.SUBMITTING,
                        held_by=lease,
                        lease_token=lease,
                        lease_until=lease_until,
                        progress=progress,
                    )
        finally:
            connection.close()  # this thread's own connection

    reader = threading.Thread(target=read, name=f"progress-{asset_id}", daemon=True)
    reader.start()
    try:
        yield
    finally:
        done.set()
        reader.join(timeout=5)


def _submit_failed(asset: Asset, lease: str, error: ProviderError) -> None:
    """A submission that did not go through: queue it again later when that can help (rule 3), else fail.

    If the provider called back meanwhile naming the task (it did accept it), the task is adopted instead.
    """
    called_back = (
        Asset.objects.filter(pk=asset.pk, lease_token=lease).values_list("external_task_id", flat=True).first()
    )
    if called_back:
        asset.external_task_id = called_back
        logger.warning("asset %s: %s, but the provider called back: adopting its task", asset.pk, error.message)
        _adopt(asset, held_by=lease)
        return
    now = timezone.now()
    unreachable_since = (asset.unreachable_since or now) if error.unreachable else None
    unreachable_for = (now - unreachable_since).total_seconds() if unreachable_since else 0.0
    given_up = error.unreachable and unreachable_for >= settings.GENBOX_UNREACHABLE_SECONDS
    if error.retryable and not error.ambiguous and not given_up and now < asset.deadline_at:
        delay = _backoff(asset.submit_attempts, error.retry_after, cap=SUBMIT_BACKOFF_MAX)
        if move(
            asset,
            Stage.SUBMITTING,
            Stage.QUEUED,
            held_by=lease,
            due_at=now + timedelta(seconds=delay),
            last_error=error.message[:4000],
            unreachable_since=unreachable_since,
        ):
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
    elif given_up:
        message += (
            f" (no connection for {_duration(unreachable_for)}, {asset.submit_attempts} attempts; "
            "GENBOX_UNREACHABLE_SECONDS sets how long Genbox keeps trying)"
        )
    elif error.retryable:
        message += f" (still failing after {asset.submit_attempts} attempts)"
    _fail(asset, message, held_by=lease)


# --- Following the provider's task -------------------------------------------------------------------


def run_due() -> dict[str, int]:
    """What beat sends every ``GENBOX_POLL_TICK_SECONDS``: the due submissions, then the due polls, a batch of
    each; while a batch comes back full, the next one is sent at once instead of waiting for the tick."""
    limit = settings.GENBOX_POLL_BATCH
    done = {"submitted": submit_due(limit=limit), "polled": poll_due(limit=limit)}
    if limit in done.values():
        from .tasks import generation_run_due

        generation_run_due.delay()
    return done


def poll_due(*, limit: int | None = None) -> int:
    """Poll the POLLING assets that are due (rules 1 and 4), up to ``limit``; how many were claimed.

    They are claimed in one statement under one lease, their providers asked concurrently
    (``GENBOX_POLL_CONCURRENCY`` threads, pooled keep-alive connections), and the "still running" answers
    written back in one statement; results go to the store queue, failures are recorded one by one. A callback
    that arrives meanwhile revokes the lease, so this batch's late answer cannot undo it.
    """
    limit = limit or settings.GENBOX_POLL_BATCH
    now = timezone.now()
    lease = new_lease()
    ids = claim_due(
        Stage.POLLING, limit=limit, lease=lease, lease_until=now + _POLL_LEASE, polls_sent=F("polls_sent") + 1
    )
    if not ids:
        return 0
    assets = list(Asset.objects.filter(pk__in=ids, lease_token=lease).only(*_POLL_FIELDS))
    models = {model_id: current_model(model_id) for model_id in {a.ai_model_id for a in assets}}
    adapters: dict[int, Any] = {}
    asking = []
    for asset in assets:
        model = models.get(asset.ai_model_id)
        if model is None:
            _fail(asset, "The AI model was deleted while the generation was running.", held_by=lease)
            continue
        asset.ai_model = model
        if asset.deadline_at and now >= asset.deadline_at:
            _fail_timeout(asset, held_by=lease)
            continue
        try:
            if model.provider_id not in adapters:
                adapters[model.provider_id] = get_adapter(model.provider)
        except LookupError as exc:
            _fail(asset, str(exc), held_by=lease)
            continue
        asking.append(asset)
    answers = _ask_all([(adapters[a.ai_model.provider_id], a.ai_model, a.external_task_id) for a in asking])

    still_running = []
    for asset, answer in zip(asking, answers, strict=True):
        if isinstance(answer, Running):
            still_running.append((asset, answer))
        elif isinstance(answer, ProviderError):
            _poll_failed(asset, lease, answer)
        elif isinstance(answer, Failed):
            _fail(asset, answer.message, held_by=lease)
        else:
            _begin_store(asset, answer, held_by=lease)
    _write_back_running(still_running, lease, now)
    return len(ids)


# What each step reads of an asset: no large field it does not use (submit and poll get the model from
# current_model; the store joins only its provider's fields).
_SUBMIT_FIELDS = (
    "id",
    "box_id",
    "stage",
    "ai_model_id",
    "parent_asset_id",
    "prompt_text",
    "generation_config",
    "metadata",
    "callback_token",
    "external_task_id",
    "started_at",
    "submitted_at",
    "deadline_at",
    "submit_attempts",
    "unreachable_since",
)
# What a store needs of the provider (its name, and what an adapter reads to download), in the same query.
_PROVIDER_FIELDS = ("name", "kind", "base_url", "api_key", "settings")
_STORE_FIELDS = (
    "id",
    "box_id",
    "stage",
    "ai_model_id",
    "file",
    "deadline_at",
    "store_failures",
    "poll_failures_in_a_row",
)
_POLL_FIELDS = (
    "id",
    "stage",
    "ai_model_id",
    "external_task_id",
    "submitted_at",
    "due_at",
    "deadline_at",
    "awaits_callback",
    "progress",
    "poll_failures_in_a_row",
    "store_failures",
    "submit_attempts",
    "last_error",
    "metadata",
)


_models: dict[int, AIModel] = {}


def current_model(model_id: int | None) -> AIModel | None:
    """The model with its provider, as stored now: a copy kept per process while neither was saved since (one
    small query checks ``updated_at``), so a hot path does not rebuild their large JSON fields per task."""
    if model_id is None:
        return None
    stamp = AIModel.objects.filter(pk=model_id).values_list("updated_at", "provider__updated_at").first()
    if stamp is None:
        _models.pop(model_id, None)
        return None
    model = _models.get(model_id)
    if model is None or (model.updated_at, model.provider.updated_at) != stamp:
        model = _models[model_id] = AIModel.objects.select_related("provider").get(pk=model_id)
    return model


def _ask_all(queries: list[tuple[Any, AIModel, str]]) -> list[Any]:
    """Each (adapter, model, task id)'s status: a poll result or the ``ProviderError`` it raised. Concurrently
    when there are several; the threads never touch the database."""
    if len(queries) <= 1:
        return [_ask(*query) for query in queries]
    with ThreadPoolExecutor(min(settings.GENBOX_POLL_CONCURRENCY, len(queries)), "genbox-poll") as pool:
        return list(pool.map(lambda query: _ask(*query), queries))


def _ask(adapter, model: AIModel, task_id: str) -> Any:
    try:
        return adapter.poll(model, task_id)
    except ProviderError as error:
        return error
    except Exception as exc:  # an answer the adapter did not expect: counted like an unreadable one
        logger.exception("task %s: the status query failed unexpectedly", task_id)
        return ProviderError(f"{model.provider.name}: unexpected answer ({exc!r})", retryable=True)


def _write_back_running(answers: list[tuple[Asset, Running]], lease: str, now: datetime) -> None:
    """One UPDATE for every "still running" answer of a batch: its progress and its next due time."""
    if not answers:
        return
    when, fraction = DateTimeField(), FloatField()
    due = [When(pk=a.pk, then=Value(_next_poll_at(a, now), when)) for a, _ in answers]
    progress = [
        When(pk=a.pk, then=Value(r.progress if r.progress is not None else a.progress, fraction)) for a, r in answers
    ]
    move_many(
        [a.pk for a, _ in answers],
        Stage.POLLING,
        Stage.POLLING,
        held_by=lease,
        due_at=Case(*due, default=F("due_at"), output_field=when),
        progress=Case(*progress, default=F("progress"), output_field=fraction),
        poll_failures_in_a_row=0,
        last_error="",
    )


def _next_poll_at(asset: Asset, now: datetime) -> datetime:
    """When to poll a running task again: counted from when this poll was due, so that waiting for a tick or a
    busy worker does not push every later poll further back (and, learnt, inflate the model's typical time);
    from now if this poll came so late that the next one would already be due."""
    scheduled = min(asset.due_at or now, now)
    at = scheduled + timedelta(seconds=_poll_delay(asset, scheduled))
    return at if at > now else now + timedelta(seconds=_poll_delay(asset, now))


def _poll_failed(asset: Asset, lease: str, error: ProviderError) -> None:
    failures = asset.poll_failures_in_a_row + 1
    if not error.retryable or failures >= settings.GENBOX_POLL_ERROR_LIMIT:
        suffix = f" ({failures} failed status queries in a row)" if error.retryable else ""
        _fail(asset, error.message + suffix, held_by=lease)
        return
    delay = _backoff(failures, error.retry_after, cap=POLL_INTERVAL_MAX)
    if move(
        asset,
        Stage.POLLING,
        Stage.POLLING,
        held_by=lease,
        poll_failures_in_a_row=failures,
        due_at=timezone.now() + timedelta(seconds=delay),
        last_error=error.message[:4000],
    ):
        logger.warning("asset %s: %s; asking again in %.1f s", asset.pk, error.message, delay)


def _poll_delay(asset: Asset, now: datetime, *, awaits_callback: bool | None = None) -> float:
    """Seconds until the next poll (rule 4).

    Once the model has a history, the first poll comes shortly before its typical provider time (the median
    of its recent runs; 5 % and a second early, so the estimate, which includes how late the end was seen,
    cannot creep upwards), then the intervals grow again from ``POLL_INTERVAL_MIN``: a task that takes its
    usual time costs two or three polls. Without a history they grow from the start (2, 4, 8, 16 s…). While a
    callback is expected polling is only a safety net: from well after the typical time, and sparse. Growing
    intervals get ±5 % of jitter, so a burst of generations does not stay in step.
    """
    age = (now - (asset.submitted_at or now)).total_seconds()
    typical = typical_provider_seconds(asset.ai_model)
    if asset.awaits_callback if awaits_callback is None else awaits_callback:
        delay = min(
            max(age, settings.GENBOX_SAFETY_POLL_SECONDS, 1.5 * (typical or 0.0) - age), CALLBACK_POLL_INTERVAL_MAX
        )
    else:
        # The mapping's shape is the adapter's business (ComfyUI's has only an output node); this key is shared.
        cap = (asset.ai_model.response_mapping or {}).get("poll_interval_max") or POLL_INTERVAL_MAX
        first = max(0.95 * typical - 1.0, 0.0) if typical else 0.0
        if age < first:
            return first - age
        delay = min(max(age - first, POLL_INTERVAL_MIN), cap)
    return delay * random.uniform(0.95, 1.05)


_typical: dict[int, tuple[datetime, float | None]] = {}


def typical_provider_seconds(model: AIModel) -> float | None:
    """The median provider time (submitted → result seen) of the model's last ``TYPICAL_RUNS`` completed
    generations, or None with fewer than ``TYPICAL_RUNS_MIN``; read again at most once a minute per process."""
    now = timezone.now()
    cached = _typical.get(model.pk)
    if cached is not None and now - cached[0] < TYPICAL_CACHE:
        return cached[1]
    runs = (
        Asset.objects.filter(ai_model=model, status=Status.COMPLETED, provider_finished_at__isnull=False)
        .exclude(submitted_at=None)
        .order_by("-provider_finished_at")
        .values_list("submitted_at", "provider_finished_at")[:TYPICAL_RUNS]
    )
    seconds = sorted((finished - submitted).total_seconds() for submitted, finished in runs)
    typical = seconds[len(seconds) // 2] if len(seconds) >= TYPICAL_RUNS_MIN else None
    _typical[model.pk] = (now, typical)
    return typical


def _backoff(attempt: int, retry_after: float | None, *, cap: float) -> float:
    """Exponential backoff with jitter, never shorter than the provider's ``Retry-After``."""
    delay = min(cap, 2.0 * 2 ** max(0, attempt - 1)) * random.uniform(0.8, 1.2)
    return max(delay, retry_after or 0.0)


# --- Callbacks ---------------------------------------------------------------------------------------


class CallbackIgnored(Exception):
    """The callback is genuine-looking but about nothing we are waiting for; nothing was changed."""


def handle_callback(token: str, *, headers: dict[str, str], body: bytes) -> Asset:
    """A provider says a task ended (rule 5): store the result a signed callback carries, or else make the
    asset due for a poll now.

    A poll in flight loses its lease, so its late "still running" cannot push the due time back. A callback
    that arrives before the task id was saved (its worker is saving it, or died after sending) leaves the task
    id on the asset, due at once: if that worker is dead, the sweeper adopts the task instead of failing the
    generation (rule 3). Raises ``Asset.DoesNotExist`` (unknown token), ``CallbackRejected`` (bad signature or
    body) or ``CallbackIgnored`` (finished asset, or a task id that is not this asset's).
    """
    asset = Asset.objects.select_related("ai_model__provider").get(callback_token=token)
    if asset.stage not in (Stage.SUBMITTING, Stage.POLLING) or asset.ai_model is None:
        raise CallbackIgnored(f"asset {asset.pk} is not waiting for its provider (stage {asset.stage})")
    adapter = get_adapter(asset.ai_model.provider)
    task_id = adapter.callback_task_id(asset.ai_model, headers, body)
    if asset.stage == Stage.SUBMITTING and not asset.external_task_id:
        holder = asset.lease_token
        if move(
            asset,
            Stage.SUBMITTING,
            Stage.SUBMITTING,
            held_by=holder,
            lease_token=holder,
            lease_until=asset.lease_until,
            external_task_id=task_id,
        ):
            logger.info("asset %s: callback for task %s before its id was saved; kept", asset.pk, task_id)
            return asset
        asset.refresh_from_db()  # its worker saved the task id meanwhile
    if asset.stage != Stage.POLLING or task_id != asset.external_task_id:
        raise CallbackIgnored(f"task {task_id!r} is not asset {asset.pk}'s task")
    result = adapter.callback_result(asset.ai_model, headers, body)
    if result is not None:
        _begin_store(asset, result, held_by=ANY)
        logger.info("asset %s: signed callback for task %s with its result, storing", asset.pk, task_id)
    elif move(asset, Stage.POLLING, Stage.POLLING, held_by=ANY, due_at=timezone.now()):
        logger.info("asset %s: callback for task %s, polling now", asset.pk, task_id)
    return asset


# --- Storing the result ------------------------------------------------------------------------------


class _StorageFailed(Exception):
    """Saving to storage failed; the message is safe to show (no endpoint, no object key)."""


def _begin_store(asset: Asset, result: Succeeded, *, held_by: str | Holder, **recorded: Any) -> str | None:
    """Take a result towards storage (rule 6): STORING under a new lease, what the provider said of it kept on
    the asset. A result to download goes to the store queue (``GENBOX_STORE_QUEUE``), so large transfers never
    hold polls and callbacks back; inline content (synchronous providers) is the caller's to finish. The new
    lease, or None if the asset was no longer ``held_by``'s."""
    now = timezone.now()
    metadata = dict(asset.metadata)
    if result.result_urls:
        metadata["result_urls"] = [_strip_query(url) for url in result.result_urls]
    if result.cost:
        metadata["provider_cost"] = result.cost
    if result.details:
        metadata["provider_info"] = result.details
    lease = new_lease()
    if not move(
        asset,
        asset.stage,
        Stage.STORING,
        held_by=held_by,
        lease_token=lease,
        lease_until=now + timedelta(seconds=settings.GENBOX_STORE_LEASE_SECONDS),
        due_at=None,
        provider_finished_at=now,
        progress=1.0,
        metadata=metadata,
        **recorded,
    ):
        return None
    if result.content is None:
        from .tasks import generation_store

        try:  # the URLs travel in the message only: presigned ones carry credentials, not to be stored
            generation_store.apply_async((asset.pk, lease, list(result.result_urls)), queue=settings.GENBOX_STORE_QUEUE)
        except Exception:  # no broker: the sweeper takes the asset back when the store lease runs out
            logger.exception("asset %s: the store task could not be sent", asset.pk)
    return lease


def store(asset_id: int, lease: str, result_urls: list[str]) -> None:
    """The store task: download a result and save it, if ``lease`` still holds the asset (rule 6)."""
    asset = (
        Asset.objects.filter(pk=asset_id, lease_token=lease)
        .select_related("ai_model__provider")
        .only(*_STORE_FIELDS, *(f"ai_model__provider__{name}" for name in _PROVIDER_FIELDS))
        .first()
    )
    if asset is None or asset.stage != Stage.STORING:
        return  # taken back by the sweeper, or a duplicate delivery of a finished store
    if asset.ai_model is None:
        _fail(asset, "The AI model was deleted while its result was being stored.", held_by=lease)
        return
    _finish_store(asset, lease, Succeeded(result_urls=result_urls))


def _finish_store(asset: Asset, lease: str, result: Succeeded) -> None:
    """Stream the result to a temporary file, identify it, save it to storage and complete the asset."""
    label = asset.ai_model.provider.name
    try:
        with tempfile.NamedTemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR, prefix="genbox-result-") as spool:
            if result.content is not None:
                fetched = _spool_content(result.content, spool)
            else:
                headers = get_adapter(asset.ai_model.provider).download_headers()
                fetched = download(
                    label, result.result_urls[0], spool, max_bytes=settings.GENBOX_RESULT_MAX_BYTES, headers=headers
                )
            info = inspect_media(spool.name, max_image_side=settings.GENBOX_RESULT_MAX_SIDE)
            spool.seek(0)
            upload = File(spool)
            upload.content_type = info.mime_type  # the storage's Content-Type: what the bytes are, not the claim
            name = asset.file.field.generate_filename(asset, f"result{info.extension}")
            try:
                name = asset.file.storage.save(name, upload)
            except Exception as exc:
                logger.exception("asset %s: saving the result to storage failed", asset.pk)
                raise _StorageFailed("Saving the result to storage failed") from exc
    except ProviderError as error:  # the download: the provider's side, counted like a failed poll
        _store_failed(asset, lease, error.message, provider_error=error)
        return
    except MediaRejected as exc:
        _fail(asset, f"{label} returned a result Genbox cannot use: {exc}", held_by=lease)
        return
    except _StorageFailed as exc:
        _store_failed(asset, lease, str(exc), content_only=result.content is not None)
        return
    except Exception:  # the temporary file, the disk: ours, not the provider's; tried again like storage
        logger.exception("asset %s: storing the result failed", asset.pk)
        _store_failed(asset, lease, "Storing the result failed on the worker", content_only=result.content is not None)
        return

    if not move(
        asset,
        Stage.STORING,
        Stage.DONE,
        held_by=lease,
        outcome=Status.COMPLETED,
        asset_type=info.asset_type,
        file=name,
        mime_type=info.mime_type,
        file_size=fetched.size,
        width=info.width,
        height=info.height,
        sha256=fetched.sha256,
        error_message="",
        last_error="",
        finished_at=timezone.now(),
    ):
        asset.file.storage.delete(name)  # another worker finished it first: keep one copy
        return
    logger.info("asset %s: completed, %s bytes of %s stored as %s", asset.pk, fetched.size, info.mime_type, name)


def _spool_content(content: bytes, spool) -> Download:
    spool.write(content)
    spool.flush()
    return Download(content_type="", size=len(content), sha256=hashlib.sha256(content).hexdigest())


def _store_failed(
    asset: Asset,
    lease: str,
    message: str,
    *,
    provider_error: ProviderError | None = None,
    content_only: bool = False,
) -> None:
    """A result that could not be stored. A download error is the provider's and counts toward
    ``GENBOX_POLL_ERROR_LIMIT``; anything else is ours and is tried again until the deadline (rule 6). Either
    way the next attempt polls first, for fresh result URLs."""
    now = timezone.now()
    if provider_error is not None:
        failures = asset.poll_failures_in_a_row + 1
        if not provider_error.retryable or failures >= settings.GENBOX_POLL_ERROR_LIMIT:
            _fail(asset, message, held_by=lease)
            return
        delay = _backoff(failures, provider_error.retry_after, cap=POLL_INTERVAL_MAX)
        counters = {"poll_failures_in_a_row": failures}
    else:
        if content_only:  # the picture existed only in the provider's answer: there is nothing to fetch again
            _fail(asset, f"{message}; the result came inline and cannot be fetched again.", held_by=lease)
            return
        failures = asset.store_failures + 1
        delay = _backoff(failures, None, cap=STORE_BACKOFF_MAX)
        if asset.deadline_at and now + timedelta(seconds=delay) >= asset.deadline_at:
            _fail(asset, f"{message} ({failures} attempts, until the deadline); it was stopped.", held_by=lease)
            return
        counters = {"store_failures": failures}
    if move(
        asset,
        Stage.STORING,
        Stage.POLLING,
        held_by=lease,
        due_at=now + timedelta(seconds=delay),
        last_error=message[:4000],
        **counters,
    ):
        logger.warning("asset %s: %s; trying again in %.1f s", asset.pk, message, delay)


def _adopt(asset: Asset, *, held_by: str | Holder) -> int:
    """Follow the task a callback named while the asset was SUBMITTING (rule 3): POLLING, a poll due now to
    confirm it. 1 if adopted."""
    if asset.ai_model is None:
        return _fail(asset, "The AI model was deleted while the generation was being submitted.", held_by=held_by)
    now = timezone.now()
    if not move(
        asset,
        Stage.SUBMITTING,
        Stage.POLLING,
        held_by=held_by,
        submitted_at=asset.started_at,
        due_at=now,
        deadline_at=now + timedelta(seconds=asset.ai_model.effective_timeout_seconds),
        awaits_callback=False,
        unreachable_since=None,
    ):
        return 0
    logger.warning("asset %s: adopted task %s from its callback", asset.pk, asset.external_task_id)
    return 1


# --- The sweeper -------------------------------------------------------------------------------------


def sweep(*, batch: int = 500) -> dict[str, int]:
    """Repair what lost messages and dead workers left behind (rule 7). Returns counts per action."""
    now = timezone.now()
    overdue = now - timedelta(seconds=settings.GENBOX_SWEEP_GRACE)
    counts = {"adopted": 0, "lost_submissions": 0, "timed_out": 0, "requeued_submits": 0, "restored": 0}
    unfinished = Asset.objects.select_related("ai_model__provider")

    for asset in unfinished.filter(stage=Stage.SUBMITTING, lease_until__lt=now)[:batch]:
        if asset.external_task_id:  # a callback named the task the dead worker had sent: adopt it, poll to confirm
            counts["adopted"] += _adopt(asset, held_by=EXPIRED)
            continue
        counts["lost_submissions"] += _fail(
            asset,
            "The worker stopped while submitting to the provider. The provider may or may not have accepted the "
            "task, so Genbox did not send it again (that could charge twice); generate again if no result appears.",
            held_by=EXPIRED,
        )
    for asset in unfinished.filter(stage__in=[Stage.QUEUED, Stage.POLLING], deadline_at__lt=now)[:batch]:
        counts["timed_out"] += _fail_timeout(asset, held_by=FREE)
    gpu = unfinished.filter(stage=Stage.QUEUED, due_at__lt=overdue).exclude(
        ai_model__provider__kind__in=asynchronous_kinds()
    )
    for asset in gpu[:batch]:
        # Due again from now: a submission waiting its turn in a busy GPU queue is re-sent once per grace
        # period, not on every sweep. (Others have no message to lose: submit_due finds them.)
        if move(asset, Stage.QUEUED, Stage.QUEUED, held_by=FREE, due_by=asset.due_at, due_at=now):
            _enqueue_submit(asset.pk, asset.ai_model)
            counts["requeued_submits"] += 1
    for asset in unfinished.filter(stage=Stage.STORING, lease_until__lt=now)[:batch]:
        # Polled again first: the result URLs travelled in the lost message only.
        counts["restored"] += move(asset, Stage.STORING, Stage.POLLING, held_by=EXPIRED, due_at=now)
    if any(counts.values()):
        logger.info("sweep: %s", counts)
    return counts


# --- Helpers -----------------------------------------------------------------------------------------


def _fail(asset: Asset, message: str, *, held_by: str | Holder, **recorded: Any) -> int:
    """Mark the asset FAILED with ``message`` from the stage it is in, as ``held_by`` holds it; 1 if it was."""
    changed = move(
        asset,
        asset.stage,
        Stage.DONE,
        held_by=held_by,
        outcome=Status.FAILED,
        error_message=message[:4000],
        finished_at=timezone.now(),
        **recorded,
    )
    if changed:
        logger.warning("asset %s: failed: %s", asset.pk, message)
    return int(changed)


def _fail_timeout(asset: Asset, *, held_by: str | Holder) -> int:
    """Fail a QUEUED or POLLING asset past its deadline: the sweeper's (``FREE``: unless a worker holds it, whose
    own write decides) or a poll batch's that claimed it."""
    last = f"; the last error: {asset.last_error}" if asset.last_error else ""
    if asset.stage == Stage.QUEUED and asset.ai_model and submit_queue(asset.ai_model):
        waited = _duration(settings.GENBOX_GPU_QUEUE_WAIT_SECONDS)
        message = (
            f"The generation did not start in time: still waiting for the GPU (GENBOX_GPU_QUEUE_WAIT_SECONDS is "
            f"{waited}){last}. It was stopped."
        )
        return _fail(asset, message, held_by=held_by)
    seconds = asset.ai_model.effective_timeout_seconds if asset.ai_model else None
    limit = f" within {_duration(seconds)}" if seconds else ""
    where = "the provider" if asset.stage == Stage.POLLING else f"the queue, after {asset.submit_attempts} attempts"
    return _fail(
        asset, f"The generation did not finish{limit} (still at {where}{last}); it was stopped.", held_by=held_by
    )


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
