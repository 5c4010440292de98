"""A scripted provider for driving the lifecycle directly, one step at a time, without a broker or a clock.

``FakeAdapter.script`` says what the provider answers: each ``submits`` / ``polls`` / ``runs`` entry is used
once, in order (an exception is raised, anything else returned), and a callable entry is called first with
the adapter (to make something happen while the request is "in flight") and its return value used.
``sent`` records each call; ``callback_task_id`` / ``callback_result`` are what every callback names and
carries (a result stands for a signed callback). Registered as the provider kind ``fake`` by the
``fake_provider`` fixture.
"""

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from apps.ai_providers.contract import Adapter


@dataclass
class Script:
    submits: deque = field(default_factory=deque)
    polls: deque = field(default_factory=deque)
    runs: deque = field(default_factory=deque)
    sent: list[tuple[str, Any]] = field(default_factory=list)
    callback_task_id: str = ""
    callback_result: Any = None


class FakeAdapter(Adapter):
    label = "Fake"
    script = Script()

    @classmethod
    def validate_response_mapping(cls, value: Any, request_schema: Any) -> None:
        return None

    def _answer(self, queue: deque) -> Any:
        answer = queue.popleft()
        if callable(answer):
            answer = answer(self)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def submit(self, model, body: dict, *, callback_url: str | None):
        self.script.sent.append(("submit", body))
        return self._answer(self.script.submits)

    def poll(self, model, task_id: str):
        self.script.sent.append(("poll", task_id))
        return self._answer(self.script.polls)

    def run(self, model, body: dict, *, timeout: float):
        self.script.sent.append(("run", body))
        return self._answer(self.script.runs)

    def callback_task_id(self, model, headers: dict[str, str], body: bytes) -> str:
        return self.script.callback_task_id

    def callback_result(self, model, headers: dict[str, str], body: bytes):
        return self.script.callback_result


class SynchronousFakeAdapter(FakeAdapter):
    synchronous = True
