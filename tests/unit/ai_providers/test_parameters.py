import pytest
from django.core.exceptions import ValidationError

from apps.ai_providers.parameters import validate_parameters_schema, validate_request_schema


def messages(schema) -> str:
    with pytest.raises(ValidationError) as info:
        validate_parameters_schema(schema)
    return " ".join(info.value.messages)


def test_a_complete_schema_is_accepted():
    validate_parameters_schema(
        {
            "aspect_ratio": {"type": "select", "label": "Aspect", "default": "16:9", "options": ["16:9", "9:16"]},
            "duration": {"type": "integer", "default": 8, "min": 4, "max": 8, "required": False},
            "guidance": {"type": "number", "min": 0, "max": 20.5},
            "watermark": {"type": "boolean", "default": False},
            "style": {"type": "string", "max": 100, "description": "free text"},
        }
    )
    validate_parameters_schema({})


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ([], "JSON object"),
        ({"x": "string"}, "'x': must be an object"),
        ({"x": {"type": "color"}}, "type must be one of"),
        ({"x": {"type": "select"}}, "non-empty 'options'"),
        ({"x": {"type": "select", "options": ["a"], "default": "b"}}, "default 'b'"),
        ({"x": {"type": "integer", "default": 2.5}}, "default 2.5"),
        ({"x": {"type": "integer", "min": 5, "max": 1}}, "min (5) is greater than max (1)"),
        ({"x": {"type": "boolean", "min": 1}}, "'min' only applies"),
        ({"x": {"type": "string", "options": ["a"]}}, "'options' only applies to type select"),
        ({"x": {"type": "string", "colour": "red"}}, "unknown keys ['colour']"),
        ({"x": {"type": "string", "required": "yes"}}, "'required' must be true or false"),
        ({"1x": {"type": "string"}}, "parameter name"),
        ({"x": {"type": "boolean", "default": "true"}}, "default 'true'"),
    ],
)
def test_invalid_parameters_schemas_are_rejected_with_a_reason(schema, expected):
    assert expected in messages(schema)


def test_every_problem_is_reported_at_once():
    text = messages({"a": {"type": "nope"}, "b": {"type": "select"}})

    assert "'a'" in text and "'b'" in text


@pytest.mark.parametrize("schema", [{}, [], "text", None])
def test_request_schema_must_be_a_non_empty_object(schema):
    with pytest.raises(ValidationError):
        validate_request_schema(schema)
