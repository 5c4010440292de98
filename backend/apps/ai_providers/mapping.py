"""Reading a provider's answers as described by data: ``AIModel.response_mapping``.

An async provider answers a submission with a task id and a status query with a status, results and
errors, each somewhere in its JSON. Where, and what the status values mean, differs per endpoint family;
the mapping says it, so a new family is a new row, not new code::

    {
      "task_id_path": "data.taskId",
      "poll_task_id_param": "taskId",
      "status_path": "data.state",
      "status_values": {"success": "succeeded", "fail": "failed", "waiting": "running"},
      "result_url_paths": ["data.resultJson.resultUrls"],
      "error_paths": ["data.failMsg", "data.failCode"],
      "progress_path": "data.progress",
      "cost_paths": {"credits": "data.creditsConsumed"},
      "callback_field": "callBackUrl",
      "callback_task_id_path": "data.taskId"
    }

Paths are dotted keys and list indexes (``data.items.0.url``). A value that is a JSON *string* is parsed
when the path continues into it (Kie's ``resultJson``). Status values not listed count as running.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

OUTCOMES = ("running", "succeeded", "failed")
_KEYS = {
    "task_id_path",
    "poll_task_id_param",
    "status_path",
    "status_values",
    "result_url_paths",
    "error_paths",
    "progress_path",
    "cost_paths",
    "callback_field",
    "callback_task_id_path",
    "poll_interval_max",
}
_MISSING = object()


def dig(document: Any, path: str) -> Any:
    """The value at ``path`` in ``document``, or None. JSON strings met on the way are parsed."""
    value = document
    for part in path.split("."):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
        if value is _MISSING:
            return None
    return value


@dataclass(frozen=True)
class ResponseMapping:
    task_id_path: str
    status_path: str
    status_values: dict[str, str]
    result_url_paths: list[str]
    poll_task_id_param: str = "taskId"
    error_paths: list[str] = field(default_factory=list)
    progress_path: str | None = None
    cost_paths: dict[str, str] = field(default_factory=dict)
    callback_field: str | None = None
    callback_task_id_path: str | None = None
    poll_interval_max: float | None = None

    @classmethod
    def from_json(cls, data: dict) -> "ResponseMapping":
        return cls(**data)

    def outcome(self, answer: Any) -> tuple[str, Any]:
        """("running" | "succeeded" | "failed", the raw status value)."""
        raw = dig(answer, self.status_path)
        return self.status_values.get(str(raw), "running"), raw

    def result_urls(self, answer: Any) -> list[str]:
        """The first non-empty result found along ``result_url_paths``; a single URL becomes a list."""
        for path in self.result_url_paths:
            value = dig(answer, path)
            if isinstance(value, str) and value:
                return [value]
            if isinstance(value, list):
                urls = [item for item in value if isinstance(item, str) and item]
                if urls:
                    return urls
        return []

    def error(self, answer: Any) -> str:
        parts = []
        for path in self.error_paths:
            value = dig(answer, path)
            if value not in (None, "") and str(value) not in parts:
                parts.append(str(value))
        return ": ".join(parts)

    def progress(self, answer: Any) -> float | None:
        if not self.progress_path:
            return None
        try:
            value = float(dig(answer, self.progress_path))
        except (TypeError, ValueError):
            return None
        return min(1.0, max(0.0, value / 100 if value > 1 else value))

    def cost(self, answer: Any) -> dict[str, Any]:
        found = {name: dig(answer, path) for name, path in self.cost_paths.items()}
        return {name: value for name, value in found.items() if value not in (None, "")}


def validate_response_mapping(value: Any) -> None:
    """Raise ``ValidationError`` unless ``value`` is empty (a provider that needs none) or a usable mapping."""
    if value in ({}, None):
        return
    if not isinstance(value, dict):
        raise ValidationError("Must be a JSON object (see README: Adding a model).")
    errors = []
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        errors.append(f"unknown keys {unknown}; allowed: {sorted(_KEYS)}.")
    for key in ("task_id_path", "status_path", "status_values", "result_url_paths"):
        if key not in value:
            errors.append(f"'{key}' is required.")
    for key in (
        "task_id_path",
        "status_path",
        "poll_task_id_param",
        "progress_path",
        "callback_field",
        "callback_task_id_path",
    ):
        if key in value and not (isinstance(value[key], str) and value[key]):
            errors.append(f"'{key}' must be a non-empty string.")
    for key in ("result_url_paths", "error_paths"):
        if key in value and not (isinstance(value[key], list) and all(isinstance(p, str) and p for p in value[key])):
            errors.append(f"'{key}' must be a list of paths.")
    statuses = value.get("status_values")
    if statuses is not None:
        if not isinstance(statuses, dict) or not statuses:
            errors.append("'status_values' must map the provider's status values to running, succeeded or failed.")
        else:
            wrong = sorted(str(k) for k, v in statuses.items() if v not in OUTCOMES)
            if wrong:
                errors.append(f"'status_values': {wrong} must map to one of {list(OUTCOMES)}.")
            if "succeeded" not in statuses.values():
                errors.append("'status_values' must name at least one value meaning succeeded.")
    if "cost_paths" in value and not (
        isinstance(value["cost_paths"], dict) and all(isinstance(p, str) for p in value["cost_paths"].values())
    ):
        errors.append("'cost_paths' must map names to paths.")
    interval = value.get("poll_interval_max")
    if interval is not None and not (
        isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0
    ):
        errors.append("'poll_interval_max' must be a positive number of seconds.")
    if errors:
        raise ValidationError(errors)


def refuse_response_mapping(label: str, value: Any) -> None:
    """For providers whose answers have one fixed shape: the mapping must stay empty."""
    if value not in ({}, None):
        raise ValidationError(f"{label} answers in one fixed shape; leave response_mapping empty ({{}}).")
