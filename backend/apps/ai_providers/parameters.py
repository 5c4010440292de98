"""The shape of ``AIModel.parameters_schema`` and ``request_schema``: checked whenever a model is saved.

``parameters_schema`` maps an option name to its description::

    {"aspect_ratio": {"type": "select", "label": "Aspect ratio", "default": "16:9", "options": ["16:9", "9:16"]},
     "duration":     {"type": "integer", "label": "Seconds", "default": 8, "min": 4, "max": 8, "required": false}}

Types: ``select`` (``options`` required), ``integer``, ``number`` (optional ``min`` / ``max``), ``boolean``,
``string`` (optional ``max`` = longest length).
"""

import re
from typing import Any

from django.core.exceptions import ValidationError

PARAMETER_TYPES = ("select", "integer", "number", "boolean", "string")
# Every model takes a seed, declared or not: sending a stored seed back reproduces a request exactly.
SEED_SPEC = {"type": "integer", "label": "Seed", "min": 0, "max": 2**32 - 1}
PARAMETER_KEYS = {"type", "label", "description", "default", "options", "min", "max", "required"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _value_fits(spec: dict, value: Any) -> bool:
    kind = spec["type"]
    if kind == "select":
        return value in spec["options"]
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str) and ("max" not in spec or len(value) <= spec["max"])
    if kind == "integer" and not (isinstance(value, int) and not isinstance(value, bool)):
        return False
    if kind == "number" and not _is_number(value):
        return False
    return ("min" not in spec or value >= spec["min"]) and ("max" not in spec or value <= spec["max"])


def _parameter_errors(name: str, spec: Any) -> list[str]:
    if not _NAME.match(name):
        return [f"'{name}': a parameter name must be letters, digits and underscores, not starting with a digit."]
    if not isinstance(spec, dict):
        return [f'\'{name}\': must be an object like {{"type": "string"}}.']
    errors = []
    unknown = sorted(set(spec) - PARAMETER_KEYS)
    if unknown:
        errors.append(f"'{name}': unknown keys {unknown}; allowed: {sorted(PARAMETER_KEYS)}.")
    kind = spec.get("type")
    if kind not in PARAMETER_TYPES:
        return errors + [f"'{name}': type must be one of {list(PARAMETER_TYPES)}, got {kind!r}."]
    if kind == "select":
        options = spec.get("options")
        if not isinstance(options, list) or not options:
            errors.append(f"'{name}': a select needs a non-empty 'options' list.")
    elif "options" in spec:
        errors.append(f"'{name}': 'options' only applies to type select.")
    for bound in ("min", "max"):
        if bound in spec:
            if kind not in ("integer", "number", "string"):
                errors.append(f"'{name}': '{bound}' only applies to integer, number and string.")
            elif not _is_number(spec[bound]) or (kind != "number" and not isinstance(spec[bound], int)):
                errors.append(f"'{name}': '{bound}' must be a number.")
    if not errors and _is_number(spec.get("min")) and _is_number(spec.get("max")) and spec["min"] > spec["max"]:
        errors.append(f"'{name}': min ({spec['min']}) is greater than max ({spec['max']}).")
    for text_key in ("label", "description"):
        if text_key in spec and not isinstance(spec[text_key], str):
            errors.append(f"'{name}': '{text_key}' must be text.")
    if "required" in spec and not isinstance(spec["required"], bool):
        errors.append(f"'{name}': 'required' must be true or false.")
    if not errors and "default" in spec and not _value_fits(spec, spec["default"]):
        errors.append(f"'{name}': default {spec['default']!r} is not a valid {kind} for this parameter.")
    return errors


def validate_parameters_schema(value: Any) -> None:
    """Raise ``ValidationError`` listing every problem of a ``parameters_schema``."""
    if not isinstance(value, dict):
        raise ValidationError("Must be a JSON object mapping option names to their descriptions.")
    errors = [message for name, spec in value.items() for message in _parameter_errors(str(name), spec)]
    if errors:
        raise ValidationError(errors)


def validate_request_schema(value: Any) -> None:
    if not isinstance(value, dict) or not value:
        raise ValidationError("Must be a non-empty JSON object: the provider's request body with <<var>> placeholders.")


def _coerce(spec: dict, value: Any) -> Any:
    """Accept the obvious spellings form clients send: "8" for an integer, "0.5" for a number."""
    kind = spec["type"]
    if isinstance(value, str) and kind in ("integer", "number"):
        try:
            number = float(value) if kind == "number" else int(value)
        except ValueError:
            return value
        return number
    if kind == "select" and value not in spec["options"]:
        # "8" for an option 8, or 8 for an option "8".
        for option in spec["options"]:
            if str(option) == str(value):
                return option
    return value


def _allowed(spec: dict) -> str:
    kind = spec["type"]
    if kind == "select":
        return "one of " + ", ".join(repr(option) for option in spec["options"])
    if kind == "boolean":
        return "true or false"
    if kind == "string":
        return f"text of at most {spec['max']} characters" if "max" in spec else "text"
    bounds = [f"≥ {spec['min']}" if "min" in spec else "", f"≤ {spec['max']}" if "max" in spec else ""]
    described = " and ".join(bound for bound in bounds if bound)
    noun = "a whole number" if kind == "integer" else "a number"
    return f"{noun} {described}".strip()


def validate_generation_config(parameters_schema: dict, config: Any) -> dict:
    """Check a user's ``generation_config`` against the model's ``parameters_schema``.

    Returns the config with defaults filled in and obvious string spellings converted ("8" → 8 for an
    integer); ``seed`` is accepted for every model (``SEED_SPEC``) unless the model describes it itself.
    Raises ``ValidationError`` with one message per bad key, each naming the key and what is
    allowed; unknown keys and missing required options are errors.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValidationError({"generation_config": ["Must be a JSON object of option names to values."]})
    parameters_schema = {"seed": SEED_SPEC, **parameters_schema}
    errors: dict[str, list[str]] = {}
    result: dict[str, Any] = {}
    for name in config:
        if name not in parameters_schema:
            known = ", ".join(sorted(parameters_schema)) or "none"
            errors[f"generation_config.{name}"] = [f"Unknown option for this model. Options: {known}."]
    for name, spec in parameters_schema.items():
        if name in config and config[name] is not None:
            value = _coerce(spec, config[name])
            if not _value_fits(spec, value):
                errors[f"generation_config.{name}"] = [f"{config[name]!r} is not allowed; expected {_allowed(spec)}."]
                continue
            result[name] = value
        elif "default" in spec:
            result[name] = spec["default"]
        elif spec.get("required"):
            errors[f"generation_config.{name}"] = [f"Required; expected {_allowed(spec)}."]
    if errors:
        raise ValidationError(errors)
    return result
