"""The one interface every provider adapter implements, and the results it returns.

An adapter translates; it never touches the database or storage. The pipeline
(``apps.generations.lifecycle``) decides what each result means for an asset.
"""

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

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
    """Done. ``result_urls`` to download, first one is the asset's file; ``cost`` as the provider reports it.

    A synchronous provider answers with the file itself: ``content`` (then ``result_urls`` is empty).
    ``details`` is what the provider says about the result (A1111's ``info``: seed, sampler, …), stored
    on the asset as ``metadata.provider_info``.
    """

    result_urls: list[str] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)
    content: bytes | None = None
    details: dict[str, Any] = field(default_factory=dict)


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
    ``unreachable``: no connection could be made at all (refused, no route): nothing was sent.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        ambiguous: bool = False,
        retry_after: float | None = None,
        unreachable: bool = False,
    ):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.ambiguous = ambiguous
        self.retry_after = retry_after
        self.unreachable = unreachable


@dataclass(frozen=True)
class Source:
    """A stored image a request refers to: the parent asset (``image``) or an inpainting mask (``mask``).

    ``url`` is an absolute address the provider may fetch, or None when our storage has none.
    """

    role: str
    filename: str
    content_type: str
    width: int | None
    height: int | None
    url: str | None
    open: Callable[[], BinaryIO]

    def read(self) -> bytes:
        with self.open() as handle:
            return handle.read()


class SourceUnreachable(Exception):
    """The provider has no way to get the source image; ``str(exc)`` says what to configure."""


class CallbackRejected(Exception):
    """A callback request is not genuine or not understood; nothing was changed."""


class Adapter:
    """Speaks one provider's protocol. One instance per provider row; cheap to create.

    An asynchronous provider (``synchronous = False``) is driven by ``submit`` then ``poll``; a synchronous
    one answers the request with the result itself and is driven by ``run``, on the GPU queue.
    """

    #: Shown in messages: "Kie.ai: insufficient credits (402)".
    label = "Provider"
    #: The provider answers a generation request with the result (A1111, Kandinsky): see ``run``.
    synchronous = False

    def __init__(self, provider: "AIProvider"):
        self.provider = provider

    def url(self, path: str) -> str:
        """``path`` on the provider's base URL."""
        return self.provider.base_url.rstrip("/") + "/" + path.lstrip("/")

    def bearer_headers(self) -> dict[str, str]:
        """``Authorization: Bearer <api key>`` when the provider has a key."""
        return {"Authorization": f"Bearer {self.provider.api_key}"} if self.provider.api_key else {}

    @classmethod
    def validate_response_mapping(cls, value: Any, request_schema: Any) -> None:
        """Raise ``ValidationError`` unless ``value`` is a ``response_mapping`` this adapter can use.

        By default the general mapping of async task APIs (``adapters.mapping``).
        """
        from .mapping import validate_response_mapping

        validate_response_mapping(value)

    def submit(self, model: "AIModel", body: dict, *, callback_url: str | None) -> Submitted:
        """Send the rendered request. Raises ``ProviderError``."""
        raise NotImplementedError

    def poll(self, model: "AIModel", task_id: str) -> PollResult:
        """Ask how the task is doing. Raises ``ProviderError`` when the answer is unusable."""
        raise NotImplementedError

    def run(self, model: "AIModel", body: dict, *, timeout: float) -> "Succeeded | Failed":
        """Synchronous providers: send the request and wait up to ``timeout`` s for the result.

        Raises ``ProviderError`` when there is no usable answer.
        """
        raise NotImplementedError(f"{self.label} is not a synchronous provider")

    def progress(self) -> float | None:
        """Synchronous providers: 0–1 for the generation running now, when the provider tells."""
        return None

    def source_variables(self, source: Source) -> dict[str, Any]:
        """The template variables that hand ``source`` to this provider, named after ``source.role``.

        By default a URL the provider fetches (``<<image_url>>``, ``<<image_urls>>``): our storage's, or
        one from the provider's own upload API when ``settings.upload_inputs`` is true (our storage is
        private to our network) or our files have no absolute address.
        """
        url = source.url
        if url is None or (self.provider.settings or {}).get("upload_inputs"):
            try:
                with source.open() as content:
                    url = self.upload_input(content, filename=source.filename, content_type=source.content_type)
            except NotImplementedError:
                if url is None:
                    raise SourceUnreachable(
                        "the source image has no address the provider can fetch: set PUBLIC_BASE_URL, "
                        "or store files in S3"
                    ) from None
                raise
        return {f"{source.role}_url": url, f"{source.role}_urls": [url]}

    def download_headers(self) -> dict[str, str]:
        """Headers for fetching result URLs (providers behind an authenticating proxy)."""
        return {}

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

    def callback_result(self, model: "AIModel", headers: dict[str, str], body: bytes) -> "Succeeded | None":
        """The result a *signed* callback carries, so the asset can be stored without a confirming poll.

        Called only after ``callback_task_id`` accepted the callback. None (the default) when the callback is
        unsigned or carries no usable result: the lifecycle then polls, which is the only authority an
        unsigned callback may trigger.
        """
        return None

    def secrets(self) -> list[str]:
        """Values that must never be stored or logged (redacted from stored request copies)."""
        return [self.provider.api_key] if self.provider.api_key else []


class SynchronousAdapter(Adapter):
    """A local GPU server that answers a generation request with the picture (A1111, the Kandinsky service).

    Its answers have one fixed shape, so models have no ``response_mapping``; there is no task to poll.
    """

    synchronous = True

    @classmethod
    def validate_response_mapping(cls, value: Any, request_schema: Any) -> None:
        from .mapping import refuse_response_mapping

        refuse_response_mapping(cls.label, value)

    def source_variables(self, source: Source) -> dict[str, Any]:
        """``<<image_base64>>`` / ``<<mask_base64>>``: the file inline, in the request body."""
        return {f"{source.role}_base64": base64.b64encode(source.read()).decode("ascii")}

    def poll(self, model: "AIModel", task_id: str) -> PollResult:
        """Only reached when storing a result was interrupted: the picture existed only in that answer."""
        return Failed(f"{self.label}: the result was lost while it was being stored; generate again")


def out_of_memory_hint(detail: str) -> str:
    """A GPU server's error, with what to do about it when the GPU ran out of memory."""
    if "out of memory" in detail.lower() or "outofmemory" in detail.lower():
        return detail + " (the GPU ran out of memory: try a smaller size, fewer steps or a smaller batch)"
    return detail
