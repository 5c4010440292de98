"""The lifecycle driven step by step: a scripted provider, travelled time, direct calls to submit, poll,
callbacks, store and sweep. One test per rule of the machine and per race it must win; the end-to-end tests
(tests/e2e/) run the same code through a real broker and worker."""

from datetime import timedelta

import pytest
import time_machine
from django.core.files.storage import default_storage, storages
from django.utils import timezone
from kombu.exceptions import OperationalError

from apps.ai_providers.contract import Failed, ProviderError, Running, Submitted, Succeeded
from apps.ai_providers.models import AIModel, AIProvider
from apps.assets.models import Asset
from apps.generations import lifecycle, machine
from apps.generations.machine import EXPIRED, FREE, claim_due, move
from apps.generations.start import generation_start

Stage, Status = Asset.Stage, Asset.Status
SUBMIT, STORE, RUN_DUE = "genbox.generation.submit", "genbox.generation.store", "genbox.generation.run_due"


def fake_model(kind: str = "fake", *, timeout: int = 900) -> AIModel:
    provider, _ = AIProvider.objects.get_or_create(
        name=f"{kind} provider", defaults={"kind": kind, "base_url": "http://fake.test"}
    )
    model, _ = AIModel.objects.get_or_create(
        provider=provider,
        name="Fake model",
        defaults={
            "model_type": "IMAGE",
            "api_endpoint": "/generate",
            "request_schema": {"prompt": "<<prompt>>"},
            "timeout_seconds": timeout,
        },
    )
    return model


def start(box, kind: str = "fake", *, timeout: int = 900) -> Asset:
    [asset] = generation_start(box=box, model=fake_model(kind, timeout=timeout), prompt="a fox")
    return asset


def reload(asset: Asset) -> Asset:
    return Asset.objects.get(pk=asset.pk)


def submitted(box, script, **answer) -> Asset:
    """A generation the fake provider accepted as task ``t-1``; POLLING, its first poll due in 2 s."""
    asset = start(box)
    script.submits.append(Submitted("t-1", **answer))
    lifecycle.submit(asset.pk)
    return reload(asset)


def after(seconds: float):
    return time_machine.travel(timezone.now() + timedelta(seconds=seconds), tick=False)


def poll_and_store(sent_tasks) -> None:
    """One poll batch, then the store tasks it sent, as the workers would run them."""
    lifecycle.poll_due()
    sent_tasks.run_stores()


def seconds_until_due(asset: Asset) -> float:
    return (asset.due_at - asset.submitted_at).total_seconds()


# --- The machine ----------------------------------------------------------------------------------------


def test_every_stage_but_done_has_a_status_and_done_has_no_way_out():
    assert set(machine.MOVES) == set(Stage.values)
    assert set(machine.STATUS_OF) == set(Stage.values) - {Stage.DONE}
    assert machine.MOVES[Stage.DONE] == frozenset()


def test_a_move_the_machine_does_not_allow_is_refused_before_anything_is_written(fake_provider, box):
    asset = start(box)
    with pytest.raises(ValueError, match="QUEUED to STORING"):
        move(asset, Stage.QUEUED, Stage.STORING, held_by=FREE)
    with pytest.raises(ValueError, match="outcome"):
        move(asset, Stage.QUEUED, Stage.DONE, held_by=FREE)
    assert reload(asset).stage == Stage.QUEUED


def test_a_move_sets_the_status_its_stage_implies_and_updates_the_copy_in_memory(fake_provider, box):
    asset = start(box)
    assert move(asset, Stage.QUEUED, Stage.SUBMITTING, held_by=FREE, lease_token="L", submit_attempts=5)
    assert (asset.stage, asset.status, asset.submit_attempts, asset.lease_token) == (
        Stage.SUBMITTING,
        Status.PROCESSING,
        5,
        "L",
    )
    stored = reload(asset)
    assert (stored.stage, stored.status, stored.submit_attempts) == (Stage.SUBMITTING, Status.PROCESSING, 5)


def test_only_the_lease_holder_moves_a_held_asset_and_the_move_releases_it(fake_provider, box):
    asset = start(box)
    until = timezone.now() + timedelta(seconds=60)
    move(asset, Stage.QUEUED, Stage.SUBMITTING, held_by=FREE, lease_token="mine", lease_until=until)
    assert not move(reload(asset), Stage.SUBMITTING, Stage.QUEUED, held_by="theirs")
    assert not move(reload(asset), Stage.QUEUED, Stage.SUBMITTING, held_by=FREE)  # wrong stage
    assert move(asset, Stage.SUBMITTING, Stage.QUEUED, held_by="mine")
    assert (reload(asset).lease_token, reload(asset).lease_until) == ("", None)


def test_a_lease_that_ran_out_frees_the_asset(fake_provider, box):
    asset = start(box)
    until = timezone.now() + timedelta(seconds=60)
    move(asset, Stage.QUEUED, Stage.SUBMITTING, held_by=FREE, lease_token="dead worker", lease_until=until)
    assert not move(reload(asset), Stage.SUBMITTING, Stage.SUBMITTING, held_by=EXPIRED)
    with after(61):
        assert move(reload(asset), Stage.SUBMITTING, Stage.SUBMITTING, held_by=FREE, lease_token="new")


def test_claims_take_the_longest_due_first_and_never_one_asset_twice(fake_provider, box):
    assets = [start(box) for _ in range(3)]
    now = timezone.now()
    for seconds_ago, asset in zip((1, 3, 2), assets, strict=True):
        Asset.objects.filter(pk=asset.pk).update(due_at=now - timedelta(seconds=seconds_ago))
    Asset.objects.create(
        box=box, asset_type="IMAGE", source="GENERATED", stage=Stage.QUEUED, due_at=now + timedelta(60)
    )
    until = now + timedelta(seconds=60)

    assert claim_due(Stage.QUEUED, limit=2, lease="first", lease_until=until, submit_attempts=7) == [
        assets[1].pk,
        assets[2].pk,
    ]
    assert claim_due(Stage.QUEUED, limit=2, lease="second", lease_until=until) == [assets[0].pk]
    assert claim_due(Stage.QUEUED, limit=2, lease="third", lease_until=until) == []

    held = dict(Asset.objects.filter(pk__in=[a.pk for a in assets]).values_list("pk", "lease_token"))
    assert held == {assets[1].pk: "first", assets[2].pk: "first", assets[0].pk: "second"}
    assert set(Asset.objects.filter(lease_token="first").values_list("submit_attempts", flat=True)) == {7}


# --- Submitting -----------------------------------------------------------------------------------------


def test_a_submission_records_the_task_and_makes_the_first_poll_due_in_two_seconds(fake_provider, sent_tasks, box):
    asset = submitted(box, fake_provider)

    assert (asset.stage, asset.status, asset.external_task_id) == (Stage.POLLING, Status.PROCESSING, "t-1")
    assert fake_provider.sent == [("submit", {"prompt": "a fox"})]
    assert asset.request_payload == {"prompt": "a fox"}
    assert (asset.lease_token, asset.submit_attempts) == ("", 1)
    assert 1.9 <= seconds_until_due(asset) <= 2.1  # a model without a history: polls from 2 s, doubling
    assert sent_tasks == []  # no message per poll: the poll batches find it by its due time


def test_a_second_delivery_of_the_submit_task_sends_nothing(fake_provider, box):
    asset = submitted(box, fake_provider)
    lifecycle.submit(asset.pk)
    assert [call for call, _ in fake_provider.sent] == ["submit"]


def test_a_refused_submission_waits_in_the_queue_showing_why_and_how_often(fake_provider, sent_tasks, box):
    asset = start(box)
    fake_provider.submits.append(ProviderError("Fake: maintenance (455)", retryable=True))

    lifecycle.submit(asset.pk)

    asset = reload(asset)
    assert (asset.stage, asset.status, asset.submit_attempts) == (Stage.QUEUED, Status.PENDING, 1)
    assert asset.last_error == "Fake: maintenance (455)"
    assert asset.error_message == ""
    assert asset.due_at > timezone.now() and sent_tasks == []  # the batch takes it again when it is due


def test_a_server_that_refuses_connections_is_given_up_after_the_limit_with_the_cause(fake_provider, box, settings):
    settings.GENBOX_UNREACHABLE_SECONDS = 60
    asset = start(box)
    refused = ProviderError("Fake: cannot connect to fake.test (ConnectError)", retryable=True, unreachable=True)
    fake_provider.submits.extend([refused, refused])

    lifecycle.submit(asset.pk)
    assert reload(asset).stage == Stage.QUEUED
    with after(61):
        lifecycle.submit(asset.pk)

    asset = reload(asset)
    assert (asset.stage, asset.status) == (Stage.DONE, Status.FAILED)
    assert asset.error_message.startswith("Fake: cannot connect to fake.test (ConnectError) (no connection for")
    assert "2 attempts" in asset.error_message and "GENBOX_UNREACHABLE_SECONDS" in asset.error_message


def test_refused_connections_count_from_the_first_refusal_not_from_the_first_attempt(fake_provider, box, settings):
    settings.GENBOX_UNREACHABLE_SECONDS = 60
    asset = start(box)
    busy = ProviderError("Fake: rate limited (429)", retryable=True)
    refused = ProviderError("Fake: cannot connect to fake.test (ConnectError)", retryable=True, unreachable=True)
    fake_provider.submits.extend([busy, refused, refused])

    lifecycle.submit(asset.pk)
    with after(120):  # busy for two minutes, then down: the first refusal starts the count
        lifecycle.submit(asset.pk)
        assert reload(asset).stage == Stage.QUEUED
        refused_since = reload(asset).unreachable_since
    with after(150):
        lifecycle.submit(asset.pk)

    asset = reload(asset)
    assert asset.stage == Stage.QUEUED and asset.unreachable_since == refused_since
    assert asset.last_error == refused.message


def test_a_generation_that_times_out_in_the_queue_keeps_the_last_cause(fake_provider, box):
    asset = start(box, timeout=60)
    fake_provider.submits.append(ProviderError("Fake: server error (500)", retryable=True))
    lifecycle.submit(asset.pk)

    with after(61):
        lifecycle.sweep()

    asset = reload(asset)
    assert asset.status == Status.FAILED
    assert "still at the queue, after 1 attempts; the last error: Fake: server error (500)" in asset.error_message


def test_a_retry_after_a_synchronous_run_uses_the_deadline_the_run_moved(fake_provider, box, settings):
    settings.GENBOX_GPU_QUEUE_WAIT_SECONDS = 5  # the first deadline: the wait for the GPU
    asset = start(box, "fake-sync", timeout=600)
    fake_provider.runs.append(ProviderError("Fake GPU: server error (500)", retryable=True))

    with after(10):  # waited longer than the GPU wait allows, yet its turn came: the run gets its full timeout
        lifecycle.submit(asset.pk)

    asset = reload(asset)
    assert (asset.stage, asset.last_error) == (Stage.QUEUED, "Fake GPU: server error (500)")


def test_a_task_named_by_a_callback_is_adopted_when_the_submission_then_fails(fake_provider, sent_tasks, box):
    asset = start(box)
    fake_provider.callback_task_id = "t-1"

    def accepted_and_called_back_but_the_answer_was_lost(adapter):
        lifecycle.handle_callback(asset.callback_token, headers={}, body=b"{}")
        return ProviderError("Fake: no answer in time (ReadTimeout)", retryable=True, ambiguous=True)

    fake_provider.submits.append(accepted_and_called_back_but_the_answer_was_lost)
    lifecycle.submit(asset.pk)

    asset = reload(asset)
    assert (asset.stage, asset.status, asset.external_task_id) == (Stage.POLLING, Status.PROCESSING, "t-1")
    assert asset.due_at <= timezone.now()  # confirmed by a poll now, never sent again
    assert [call for call, _ in fake_provider.sent] == ["submit"]


def test_a_worker_killed_while_submitting_is_failed_by_the_sweeper_and_never_resent(fake_provider, box, settings):
    asset = start(box)
    lease_ends = timezone.now() + timedelta(seconds=settings.GENBOX_SUBMIT_LEASE_SECONDS)
    move(asset, Stage.QUEUED, Stage.SUBMITTING, held_by=FREE, lease_token="killed", lease_until=lease_ends)

    lifecycle.sweep()
    assert reload(asset).stage == Stage.SUBMITTING  # the lease still runs
    with after(settings.GENBOX_SUBMIT_LEASE_SECONDS + 1):
        assert lifecycle.sweep()["lost_submissions"] == 1

    asset = reload(asset)
    assert asset.status == Status.FAILED and "did not send it again" in asset.error_message
    assert fake_provider.sent == []


def test_a_task_whose_submitter_died_is_adopted_from_its_callback_and_confirmed_by_a_poll(
    fake_provider, sent_tasks, box, settings, result_url
):
    asset = start(box)
    lease_ends = timezone.now() + timedelta(seconds=settings.GENBOX_SUBMIT_LEASE_SECONDS)
    move(asset, Stage.QUEUED, Stage.SUBMITTING, held_by=FREE, lease_token="killed", lease_until=lease_ends)
    fake_provider.callback_task_id = "t-9"  # sent by the worker, which died before saving the id

    lifecycle.handle_callback(asset.callback_token, headers={}, body=b"{}")
    assert (reload(asset).stage, reload(asset).external_task_id) == (Stage.SUBMITTING, "t-9")
    with after(settings.GENBOX_SUBMIT_LEASE_SECONDS + 1):
        assert lifecycle.sweep()["adopted"] == 1
        assert reload(asset).due_at <= timezone.now()
        fake_provider.polls.append(Succeeded(result_urls=[result_url]))
        poll_and_store(sent_tasks)

    asset = reload(asset)
    assert (asset.status, asset.external_task_id) == (Status.COMPLETED, "t-9")
    assert fake_provider.sent == [("poll", "t-9")]  # confirmed, never sent again


def test_a_callback_before_a_live_worker_saved_the_task_id_leaves_the_worker_to_finish(fake_provider, box):
    asset = start(box)
    fake_provider.callback_task_id = "t-1"

    def accepted_and_called_back_at_once(adapter):
        lifecycle.handle_callback(asset.callback_token, headers={}, body=b"{}")
        return Submitted("t-1", callback_expected=True)

    fake_provider.submits.append(accepted_and_called_back_at_once)
    lifecycle.submit(asset.pk)

    asset = reload(asset)
    assert (asset.stage, asset.external_task_id, asset.request_payload) == (Stage.POLLING, "t-1", {"prompt": "a fox"})
    assert asset.due_at <= timezone.now()  # it called back: polled at once, not after the usual wait


# --- Polling and callbacks ------------------------------------------------------------------------------


def test_a_running_task_is_polled_again_later_and_a_second_batch_takes_nothing(fake_provider, sent_tasks, box):
    asset = submitted(box, fake_provider)
    fake_provider.polls.append(Running(progress=0.4))

    with after(3):
        assert lifecycle.poll_due() == 1
        assert lifecycle.poll_due() == 0  # a second tick at the same moment: nothing is due any more

    asset = reload(asset)
    assert (asset.stage, asset.progress, asset.polls_sent, asset.lease_token) == (Stage.POLLING, 0.4, 1, "")
    assert 3.8 <= seconds_until_due(asset) <= 4.3  # due at 2 s, polled at 3 s: due again at 2 + 2 s (± 5 % each)
    assert [call for call, _ in fake_provider.sent] == ["submit", "poll"]
    assert sent_tasks == []


def test_one_batch_polls_every_due_task_and_writes_each_answer_back(fake_provider, sent_tasks, box, result_url):
    assets = []
    for n in range(5):
        fake_provider.submits.append(Submitted(f"t-{n}"))
        assets.append(start(box))
        lifecycle.submit(assets[-1].pk)
    answers = {
        "t-0": Running(progress=0.1),
        "t-1": Running(progress=0.7),
        "t-2": Failed("Fake: content policy"),
        "t-3": ProviderError("Fake: server error (500)", retryable=True),
        "t-4": Succeeded(result_urls=[result_url + "?X-Amz-Signature=secret"]),
    }
    fake_provider.polls.extend(lambda adapter, n=n: answers[adapter.script.sent[-1][1]] for n in range(5))

    with after(3):
        assert lifecycle.poll_due() == 5

    stored = {a.external_task_id: a for a in Asset.objects.filter(pk__in=[a.pk for a in assets])}
    assert sorted(task for call, task in fake_provider.sent if call == "poll") == ["t-0", "t-1", "t-2", "t-3", "t-4"]
    assert (stored["t-0"].progress, stored["t-1"].progress) == (0.1, 0.7)
    assert (stored["t-2"].status, stored["t-2"].error_message) == (Status.FAILED, "Fake: content policy")
    assert (stored["t-3"].poll_failures_in_a_row, stored["t-3"].last_error) == (1, "Fake: server error (500)")
    assert stored["t-4"].stage == Stage.STORING
    assert stored["t-4"].metadata["result_urls"] == [result_url + "?…"]  # the signature travels in the message only
    assert sent_tasks == [(STORE, (stored["t-4"].pk, stored["t-4"].lease_token, [answers["t-4"].result_urls[0]]), None)]
    assert {a.lease_token for a in stored.values() if a.stage == Stage.POLLING} == {""}
    sent_tasks.run_stores()
    assert reload(stored["t-4"]).status == Status.COMPLETED


def test_a_full_batch_sends_the_next_one_at_once(fake_provider, sent_tasks, box, settings):
    settings.GENBOX_POLL_BATCH = 2
    for n in range(3):
        fake_provider.submits.append(Submitted(f"t-{n}"))
        lifecycle.submit(start(box).pk)
    fake_provider.polls.extend([Running()] * 3)

    with after(3):
        assert lifecycle.run_due() == {"submitted": 0, "polled": 2}
        assert sent_tasks == [(RUN_DUE, (), None)]
        assert lifecycle.run_due() == {"submitted": 0, "polled": 1}
    assert sent_tasks == [(RUN_DUE, (), None)]  # the last batch was not full: the backlog is gone


def test_asynchronous_submissions_have_no_message_and_the_batch_submits_them(
    fake_provider, sent_tasks, box, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assets = [start(box) for _ in range(3)]
    fake_provider.submits.extend(Submitted(f"t-{n}") for n in range(3))
    assert sent_tasks == []  # generation_start sent nothing: the batch finds them by their due time

    assert lifecycle.run_due() == {"submitted": 3, "polled": 0}
    assert lifecycle.run_due() == {"submitted": 0, "polled": 0}

    stored = Asset.objects.filter(pk__in=[a.pk for a in assets])
    assert sorted(stored.values_list("external_task_id", flat=True)) == ["t-0", "t-1", "t-2"]
    assert set(stored.values_list("stage", "submit_attempts")) == {(Stage.POLLING, 1)}
    assert [call for call, _ in fake_provider.sent] == ["submit"] * 3


def test_a_synchronous_providers_submission_still_goes_to_the_gpu_queue(
    fake_provider, sent_tasks, box, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        asset = start(box, "fake-sync")
    assert sent_tasks[0][:2] == (SUBMIT, (asset.pk,))
    assert lifecycle.run_due() == {"submitted": 0, "polled": 0}  # never taken by the batch


def test_a_batch_out_of_time_gives_back_what_it_did_not_start(fake_provider, box, monkeypatch):
    assets = [start(box) for _ in range(3)]
    monkeypatch.setattr(lifecycle, "SUBMIT_BATCH_SECONDS", 30.0)
    slow = time_machine.travel(timezone.now() + timedelta(seconds=31), tick=False)

    def a_slow_provider(adapter):
        slow.start()  # the request took 31 s
        return Submitted("t-slow")

    fake_provider.submits.extend([a_slow_provider, Submitted("t-1"), Submitted("t-2")])
    try:
        assert lifecycle.submit_due() == 1
        stored = list(Asset.objects.filter(pk__in=[a.pk for a in assets]).order_by("pk"))
        assert [a.stage for a in stored] == [Stage.POLLING, Stage.QUEUED, Stage.QUEUED]
        assert {(a.lease_token, a.submit_attempts) for a in stored[1:]} == {("", 0)}  # free, never started
        assert lifecycle.submit_due() == 2  # the next batch takes them
    finally:
        slow.stop()
    assert [call for call, _ in fake_provider.sent] == ["submit"] * 3


def test_a_submission_claimed_by_a_batch_that_died_is_taken_again_when_its_lease_ends(fake_provider, box, settings):
    asset = start(box)
    until = timezone.now() + timedelta(seconds=settings.GENBOX_SUBMIT_LEASE_SECONDS)
    assert claim_due(Stage.QUEUED, limit=10, lease="dead batch", lease_until=until) == [asset.pk]
    fake_provider.submits.append(Submitted("t-1"))

    assert lifecycle.submit_due() == 0
    with after(settings.GENBOX_SUBMIT_LEASE_SECONDS + 1):
        assert lifecycle.submit_due() == 1
    assert (reload(asset).stage, reload(asset).submit_attempts) == (Stage.POLLING, 1)


def test_the_schedule_learns_the_models_typical_time_and_polls_first_near_it(fake_provider, box):
    model = fake_model()
    now = timezone.now()
    for seconds in (50, 58, 60, 61, 62, 70, 240):  # the median: 61 s
        Asset.objects.create(
            box=box,
            ai_model=model,
            asset_type="IMAGE",
            source="GENERATED",
            status=Status.COMPLETED,
            submitted_at=now - timedelta(seconds=seconds + 5),
            provider_finished_at=now - timedelta(seconds=5),
        )
    asset = submitted(box, fake_provider)
    assert seconds_until_due(asset) == pytest.approx(56.95)  # 95 % of 61 s, less a second

    fake_provider.polls.extend([Running(), Running()])
    with after(seconds_until_due(asset) + 0.1):
        lifecycle.poll_due()
        assert 1.9 <= seconds_until_due(reload(asset)) - 56.95 <= 2.1  # then closely: 2 s after it was due
    with after(80):  # long past its usual time: the intervals grow again
        lifecycle.poll_due()
        assert 21.8 <= (reload(asset).due_at - timezone.now()).total_seconds() <= 24.3  # (80 - 56.95) s ± 5 %


def test_a_callback_during_a_poll_is_not_undone_by_that_polls_answer(fake_provider, sent_tasks, box):
    asset = submitted(box, fake_provider, callback_expected=True)
    fake_provider.callback_task_id = "t-1"

    def callback_arrives_meanwhile(adapter):
        lifecycle.handle_callback(asset.callback_token, headers={}, body=b"{}")
        return Running()  # the poll was answered just before the task ended

    fake_provider.polls.extend([callback_arrives_meanwhile, Failed("Fake: the task failed")])
    with after(35):  # the safety-net poll
        called_back = timezone.now()
        assert lifecycle.poll_due() == 1
        assert reload(asset).due_at <= called_back  # still due now: the next batch polls it
        assert lifecycle.poll_due() == 1

    asset = reload(asset)
    assert (asset.status, asset.error_message) == (Status.FAILED, "Fake: the task failed")
    assert [call for call, _ in fake_provider.sent] == ["submit", "poll", "poll"]


def test_a_signed_callback_with_the_result_is_stored_without_a_poll(fake_provider, sent_tasks, box, result_url):
    asset = submitted(box, fake_provider, callback_expected=True)
    fake_provider.callback_task_id = "t-1"
    fake_provider.callback_result = Succeeded(result_urls=[result_url])

    lifecycle.handle_callback(asset.callback_token, headers={}, body=b"{}")
    assert reload(asset).stage == Stage.STORING
    assert sent_tasks.run_stores() == 1

    asset = reload(asset)
    assert (asset.status, asset.mime_type) == (Status.COMPLETED, "image/png")
    assert [call for call, _ in fake_provider.sent] == ["submit"]


def test_an_unsigned_callback_only_makes_the_task_due_for_a_poll(fake_provider, sent_tasks, box):
    asset = submitted(box, fake_provider, callback_expected=True)
    fake_provider.callback_task_id = "t-1"  # callback_result None: what a callback without a signature gives

    lifecycle.handle_callback(asset.callback_token, headers={}, body=b"{}")

    asset = reload(asset)
    assert (asset.stage, asset.status) == (Stage.POLLING, Status.PROCESSING)
    assert asset.due_at <= timezone.now() and sent_tasks == []


def test_a_callback_expected_leaves_polling_as_a_sparse_safety_net(fake_provider, box, settings):
    asset = submitted(box, fake_provider, callback_expected=True)
    assert 0.95 * settings.GENBOX_SAFETY_POLL_SECONDS <= seconds_until_due(asset)


def test_a_batch_skips_an_asset_a_poll_holds_until_that_lease_runs_out(fake_provider, box):
    asset = submitted(box, fake_provider)
    fake_provider.polls.append(Running())
    with after(10):
        assert move(
            reload(asset),
            Stage.POLLING,
            Stage.POLLING,
            held_by=FREE,
            lease_token="polling now",
            lease_until=timezone.now() + timedelta(seconds=60),
        )
        assert lifecycle.poll_due() == 0
    with after(71):  # that poll's worker died: its lease ran out
        assert lifecycle.poll_due() == 1
    assert [call for call, _ in fake_provider.sent] == ["submit", "poll"]


def test_a_callback_for_another_task_changes_nothing(fake_provider, box):
    asset = submitted(box, fake_provider)
    fake_provider.callback_task_id = "someone else's"
    with pytest.raises(lifecycle.CallbackIgnored):
        lifecycle.handle_callback(asset.callback_token, headers={}, body=b"{}")
    assert reload(asset).due_at == asset.due_at


def test_failed_polls_in_a_row_fail_the_generation_at_the_limit_saying_so(fake_provider, box, settings):
    settings.GENBOX_POLL_ERROR_LIMIT = 2
    asset = submitted(box, fake_provider)
    unreadable = ProviderError("Fake: unreadable answer", retryable=True)
    fake_provider.polls.extend([unreadable, unreadable])

    with after(3):
        lifecycle.poll_due()
    assert (reload(asset).poll_failures_in_a_row, reload(asset).last_error) == (1, "Fake: unreadable answer")
    with after(120):
        lifecycle.poll_due()

    asset = reload(asset)
    assert asset.error_message == "Fake: unreadable answer (2 failed status queries in a row)"


# --- Storing --------------------------------------------------------------------------------------------


def test_a_result_is_stored_and_the_asset_completed(fake_provider, sent_tasks, box, result_url):
    asset = submitted(box, fake_provider)
    fake_provider.polls.append(Succeeded(result_urls=[result_url]))
    with after(3):
        poll_and_store(sent_tasks)

    asset = reload(asset)
    assert (asset.stage, asset.status, asset.mime_type, asset.width) == (Stage.DONE, Status.COMPLETED, "image/png", 64)
    assert default_storage.open(asset.file.name).read().startswith(b"\x89PNG")
    assert (asset.lease_token, asset.due_at) == ("", None)


def test_a_storage_outage_is_waited_out_without_counting_against_the_provider(
    fake_provider, sent_tasks, box, result_url, settings, monkeypatch
):
    settings.GENBOX_POLL_ERROR_LIMIT = 2
    asset = submitted(box, fake_provider)
    fake_provider.polls.extend([Succeeded(result_urls=[result_url])] * 4)
    save = type(storages["default"]).save
    outage = {"left": 3}

    def save_during_outage(storage, name, content, *args, **kwargs):
        if outage["left"]:
            outage["left"] -= 1
            raise ConnectionError("Could not connect to the endpoint URL: http://s3.internal:9000/genbox/boxes/1/x.png")
        return save(storage, name, content, *args, **kwargs)

    monkeypatch.setattr(type(storages["default"]), "save", save_during_outage)
    for minute in range(1, 5):
        with after(60 * minute):
            poll_and_store(sent_tasks)
        if minute == 1:
            waiting = reload(asset)
            assert (waiting.stage, waiting.store_failures, waiting.poll_failures_in_a_row) == (Stage.POLLING, 1, 0)
            assert waiting.last_error == "Saving the result to storage failed"

    asset = reload(asset)
    assert (asset.status, asset.store_failures, asset.poll_failures_in_a_row) == (Status.COMPLETED, 3, 0)


def test_a_storage_outage_past_the_deadline_fails_without_naming_the_endpoint_or_the_key(
    fake_provider, sent_tasks, box, result_url, monkeypatch
):
    asset = submitted(box, fake_provider)
    Asset.objects.filter(pk=asset.pk).update(deadline_at=timezone.now() + timedelta(seconds=10))
    fake_provider.polls.append(Succeeded(result_urls=[result_url]))

    def storage_down(*args, **kwargs):
        raise ConnectionError("Could not connect to the endpoint URL: http://s3.internal:9000/genbox/boxes/1/x.png")

    monkeypatch.setattr(type(storages["default"]), "save", storage_down)
    with after(9):
        poll_and_store(sent_tasks)

    asset = reload(asset)
    assert asset.status == Status.FAILED
    assert (
        asset.error_message == "Saving the result to storage failed (1 attempts, until the deadline); it was stopped."
    )


def test_an_unexpected_error_while_storing_leaves_the_asset_to_be_tried_again_not_stuck(
    fake_provider, sent_tasks, box, result_url, monkeypatch
):
    asset = submitted(box, fake_provider)
    fake_provider.polls.append(Succeeded(result_urls=[result_url]))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lifecycle, "inspect_media", disk_full)
    with after(3):
        poll_and_store(sent_tasks)
        asset = reload(asset)
        assert (asset.stage, asset.lease_token, asset.store_failures) == (Stage.POLLING, "", 1)
        assert asset.last_error == "Storing the result failed on the worker"
        assert asset.due_at > timezone.now()  # polled again, for fresh URLs, after a backoff


def test_a_store_whose_worker_died_is_taken_back_by_the_sweeper(fake_provider, sent_tasks, box, settings):
    asset = submitted(box, fake_provider)
    lease_ends = timezone.now() + timedelta(seconds=settings.GENBOX_STORE_LEASE_SECONDS)
    move(asset, Stage.POLLING, Stage.STORING, held_by=FREE, lease_token="killed", lease_until=lease_ends)

    with after(settings.GENBOX_STORE_LEASE_SECONDS + 1):
        assert lifecycle.sweep()["restored"] == 1
        assert (reload(asset).stage, reload(asset).due_at <= timezone.now()) == (Stage.POLLING, True)


def test_a_store_message_for_a_lease_taken_back_does_nothing(fake_provider, sent_tasks, box, result_url, settings):
    asset = submitted(box, fake_provider)
    fake_provider.polls.append(Succeeded(result_urls=[result_url]))
    with after(3):
        lifecycle.poll_due()
    with after(settings.GENBOX_STORE_LEASE_SECONDS + 10):  # the store message waited longer than its lease
        assert lifecycle.sweep()["restored"] == 1
        sent_tasks.run_stores()

    asset = reload(asset)
    assert (asset.stage, asset.file.name) == (Stage.POLLING, "")


# --- The API's side -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_generate_answers_201_when_the_broker_is_down_and_the_sweeper_sends_it_later(
    fake_provider, sent_tasks, api, box, monkeypatch, settings
):
    from apps.generations import tasks

    broker = {"up": False}
    sent = []

    def apply_async(args=(), **options):
        if not broker["up"]:
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        sent.append(args[0])

    model = fake_model("fake-sync")  # the submissions that have a message: a GPU server's
    monkeypatch.setattr(tasks.generation_submit, "apply_async", apply_async)
    response = api.post(f"/api/boxes/{box.pk}/generate/", {"prompt": "a fox", "ai_model_id": model.pk}, format="json")

    assert response.status_code == 201, response.content
    asset = Asset.objects.get(pk=response.json()["id"])
    assert (asset.stage, asset.status) == (Stage.QUEUED, Status.PENDING)

    broker["up"] = True
    with after(settings.GENBOX_SWEEP_GRACE + 1):
        lifecycle.sweep()
    assert sent == [asset.pk]


# --- The hot path's cost --------------------------------------------------------------------------------


def test_the_hot_path_reads_no_field_it_did_not_ask_for(
    fake_provider, sent_tasks, box, result_url, django_assert_num_queries
):
    """Each step's queries, counted: a field left out of its ``only()`` would cost one more per generation."""
    asset = start(box)
    fake_model()  # the model and its history are read once per process; warm both
    lifecycle.current_model(asset.ai_model_id)
    lifecycle.typical_provider_seconds(asset.ai_model)
    fake_provider.submits.append(Submitted("t-1"))
    fake_provider.polls.extend([Running(), Succeeded(result_urls=[result_url])])

    # claim (a transaction: select, update) · the asset · the model's stamp · QUEUED→SUBMITTING · first poll
    with django_assert_num_queries(8):
        assert lifecycle.submit_due() == 1
    # claim (a transaction: select, update) · the assets · the model's stamp · the write-back
    with after(3), django_assert_num_queries(7):
        lifecycle.poll_due()
    with after(6):
        lifecycle.poll_due()
    # the asset with its provider · STORING→DONE
    with django_assert_num_queries(2):
        assert sent_tasks.run_stores() == 1
    assert reload(asset).status == Status.COMPLETED
