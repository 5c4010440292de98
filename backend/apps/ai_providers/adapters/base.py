"""The one interface every provider adapter implements, and the results it returns.

An adapter translates; it never touches the database or storage. The pipeline
(``apps.ai_providers.pipeline``) decides what each result means for an asset.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apps.ai_providers.models import AIModel, AIProvider


@dataclass(frozen=True)
class Submitted:
    """The provider accepted the task; ``callback_expected`` when it was given our callback URL."""

    task_id: str
    callback_expected: bool = False


@dataclass(frozen=True)
class Running:
    """Still running; ``progress`` is 0–1 when the provider reports it."""

    progress: float | None = None


@dataclass(frozen=True)
class Succeeded:
    """Done. ``result_urls`` to download, first one is the asset's file; ``cost`` as the provider reports it."""

    result_urls: list[str]
    cost: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    """The provider reports that the task failed; ``message`` is for the user."""

    message: str


PollResult = Running | Succeeded | Failed


class ProviderError(Exception):
    """A request to the provider did not give a usable answer.

    ``retryable``: the same request may succeed later (rate limit, maintenance, 5xx, network).
    ``ambiguous``: the request may have reached the provider and been acted on (a timeout after sending);
    a submission that fails this way must not be repeated, or the user may pay twice.
    ``retry_after``: seconds the provider asked us to wait, if it said.
    """

    def __init__(self, message: str, *, retryable: bool, ambiguous: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.ambiguous = ambiguous
        self.retry_after = retry_after


class CallbackRejected(Exception):
    """A callback request is not genuine or not understood; nothing was changed."""


class Adapter:
    """Speaks one provider's protocol. One instance per provider row; cheap to create."""

    #: Shown in messages: "Kie.ai: insufficient credits (402)".
    label = "Provider"

    def __init__(self, provider: "AIProvider"):
        self.provider = provider

    def submit(self, model: "AIModel", body: dict, *, callback_url: str | None) -> Submitted:
        """Send the rendered request. Raises ``ProviderError``."""
        raise NotImplementedError

    def poll(self, model: "AIModel", task_id: str) -> PollResult:
        """Ask how the task is doing. Raises ``ProviderError`` when the answer is unusable."""
        raise NotImplementedError

    def check_connection(self) -> str:
        """Raise ``ProviderError`` if the provider cannot be used; otherwise a short description (e.g. credits)."""
        raise NotImplementedError

    def cancel(self, model: "AIModel", task_id: str) -> None:
        raise NotImplementedError(f"{self.label} has no way to cancel a task")

    def upload_input(self, content, *, filename: str, content_type: str) -> str:
        """Hand a source file to the provider's own storage; returns a URL the provider can fetch.

        Used when our storage is not reachable from the provider. Raises ``ProviderError``.
        """
        raise NotImplementedError(f"{self.label} does not take file uploads")

    def callback_task_id(self, model: "AIModel", headers: dict[str, str], body: bytes) -> str:
        """The task id a callback is about, after checking its signature. Raises ``CallbackRejected``."""
        raise CallbackRejected(f"{self.label} does not send callbacks")

    def secrets(self) -> list[str]:
        """Values that must never be stored or logged (redacted from stored request copies)."""
        return [self.provider.api_key] if self.provider.api_key else []
