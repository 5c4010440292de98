"""The generation state machine: the stages, the moves between them, and the only code that writes them.

Every lifecycle write goes through ``move`` (one asset) or ``move_many`` / ``claim_due`` (many at once, in one
statement). Each filters on the stage the caller expects *and* on who holds the asset (its lease), derives
``status`` from the target stage, and says whether it won; a worker acts only when it won. Duplicate or late
deliveries therefore change nothing, and a write can never overwrite a newer event.
"""

import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.db.models.expressions import Combinable
from django.utils import timezone

from apps.assets.models import Asset

Stage = Asset.Stage
Status = Asset.Status

# Every stage and the stages it may move to. A move to the same stage renews or hands over the lease.
MOVES: dict[str, frozenset[str]] = {
    Stage.QUEUED: frozenset({Stage.QUEUED, Stage.SUBMITTING, Stage.DONE}),
    Stage.SUBMITTING: frozenset({Stage.SUBMITTING, Stage.QUEUED, Stage.POLLING, Stage.STORING, Stage.DONE}),
    Stage.POLLING: frozenset({Stage.POLLING, Stage.STORING, Stage.DONE}),
    Stage.STORING: frozenset({Stage.POLLING, Stage.DONE}),
    Stage.DONE: frozenset(),
}
# The status each stage shows; DONE shows the outcome, COMPLETED or FAILED.
STATUS_OF: dict[str, str] = {
    Stage.QUEUED: Status.PENDING,
    Stage.SUBMITTING: Status.PROCESSING,
    Stage.POLLING: Status.PROCESSING,
    Stage.STORING: Status.PROCESSING,
}


class Holder:
    """Whom a move requires to hold the asset, besides a lease token: nobody (``FREE``: no lease, or one that
    ran out), anybody (``ANY``: a callback revoking a poll in flight), or only an expired lease (``EXPIRED``:
    the sweeper taking back what a dead worker held)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Holder.{self.name}"


FREE, ANY, EXPIRED = Holder("FREE"), Holder("ANY"), Holder("EXPIRED")


def new_lease() -> str:
    return secrets.token_hex(16)


def _free(now: datetime) -> Q:
    return Q(lease_token="") | Q(lease_until__lt=now)


def _update(
    query: QuerySet,
    source: str,
    target: str,
    *,
    held_by: str | Holder,
    fields: dict[str, Any],
    due_by: datetime | None = None,
    outcome: str | None = None,
    where: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """The one conditional UPDATE behind every move: (rows changed, the values written)."""
    if target not in MOVES[source]:
        raise ValueError(f"the lifecycle cannot move an asset from {source} to {target}")
    if target == Stage.DONE:
        if outcome not in (Status.COMPLETED, Status.FAILED):
            raise ValueError("a move to DONE needs an outcome, COMPLETED or FAILED")
        status = outcome
    else:
        status = STATUS_OF[target]
    now = timezone.now()
    query = query.filter(stage=source)
    if held_by is FREE:
        query = query.filter(_free(now))
    elif held_by is EXPIRED:
        query = query.filter(lease_until__lt=now)
    elif held_by is not ANY:
        query = query.filter(lease_token=held_by)
    if due_by is not None:
        query = query.filter(Q(due_at__lte=due_by) | Q(due_at__isnull=True))
    if where:
        query = query.filter(**where)
    values = {"lease_token": "", "lease_until": None, **fields, "stage": target, "status": status}
    if target == Stage.DONE:
        values.setdefault("due_at", None)
    return query.update(**values), values


def move(
    asset: Asset,
    source: str,
    target: str,
    *,
    held_by: str | Holder,
    due_by: datetime | None = None,
    outcome: str | None = None,
    where: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Move ``asset`` from stage ``source`` to ``target`` in one conditional UPDATE; True if this call did it.

    The row changes only if it is still in ``source``, held as ``held_by`` says (a lease token, or a
    ``Holder``), with ``due_by`` due by then, and with ``where`` still holding those values (so that values
    computed from them in Python are exact). ``status`` follows from ``target`` (``outcome`` for DONE). The
    lease is released unless ``fields`` set a new one. On success ``asset`` is updated in memory too, so
    callers never act on values the database no longer has. Raises ``ValueError`` for a move the machine
    does not allow (a programming error, never a race), and ``TypeError`` for a value computed by the database
    (an ``F()`` expression): the copy in memory could not hold it, so compute it in Python and guard it with
    ``where``.
    """
    if any(isinstance(value, Combinable) for value in fields.values()):
        raise TypeError("move takes values, not database expressions: compute them and guard with where=")
    changed, values = _update(
        Asset.objects.filter(pk=asset.pk),
        source,
        target,
        held_by=held_by,
        due_by=due_by,
        outcome=outcome,
        fields=fields,
        where=where,
    )
    if changed != 1:
        return False
    for name, value in values.items():
        setattr(asset, name, value)
    return True


def move_many(ids: Iterable[int], source: str, target: str, *, held_by: str | Holder, **fields: Any) -> int:
    """``move`` for many assets in one statement (values may differ per row through ``Case``); how many moved.
    Copies in memory are not updated: callers use it only for write-backs they do not read again."""
    changed, _ = _update(Asset.objects.filter(pk__in=list(ids)), source, target, held_by=held_by, fields=fields)
    return changed


def claim_due(
    stage: str, *, limit: int, lease: str, lease_until: datetime, among: Q | None = None, **fields: Any
) -> list[int]:
    """Take up to ``limit`` free assets in ``stage`` (and ``among``, if given) whose due time has come, the
    longest due first, under ``lease``. Returns the ids it took, except that on a database without row locks
    (SQLite) a row another claimer took first may be among them: read them back with ``lease_token=lease``.
    Concurrent claimers skip each other's rows (``FOR UPDATE SKIP LOCKED``), and the UPDATE checks again that
    each row is free, so every asset goes to one claimer."""
    now = timezone.now()
    due = Asset.objects.filter(_free(now), among or Q(), stage=stage, due_at__lte=now)
    with transaction.atomic():
        ids = list(due.order_by("due_at").select_for_update(skip_locked=True).values_list("pk", flat=True)[:limit])
        if ids:
            _update(
                Asset.objects.filter(pk__in=ids),
                stage,
                stage,
                held_by=FREE,
                fields={"lease_token": lease, "lease_until": lease_until, **fields},
            )
    return ids
