"""<<var>> request templates: the type rules, hostile values, and what is refused before anything is sent."""

import pytest

from apps.ai_providers.templating import TemplateError, check_schema_variables, render_request, template_variables

CONTEXT = {"prompt": "a cat", "duration": 8, "image_url": "https://s3/a.png", "image_urls": ["https://s3/a.png", "u2"]}


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"duration": "<<duration>>"}, {"duration": 8}),
        ({"image_urls": "<<image_urls>>"}, {"image_urls": ["https://s3/a.png", "u2"]}),
        ({"input_urls": ["<<image_url>>"]}, {"input_urls": ["https://s3/a.png"]}),
        ({"d": " << duration >> "}, {"d": 8}),
        ({"text": "A photo of <<prompt>>, <<duration>>s"}, {"text": "A photo of a cat, 8s"}),
        ({"seed": "<<seed|default(42)>>"}, {"seed": 42}),
        ({"loud": "<<prompt|upper>>"}, {"loud": "A CAT"}),
        (
            {"nested": {"list": [{"p": "<<prompt>>"}, 3, True, None]}},
            {"nested": {"list": [{"p": "a cat"}, 3, True, None]}},
        ),
        ({"plain": "no placeholders", "n": 1.5}, {"plain": "no placeholders", "n": 1.5}),
    ],
)
def test_rendering_keeps_types_for_exact_placeholders_and_interpolates_text(schema, expected):
    assert render_request(schema, CONTEXT) == expected


@pytest.mark.parametrize(
    "hostile",
    [
        "<<duration>>",
        "{{ 7*7 }}",
        "{% for x in range(10) %}x{% endfor %}",
        "<<prompt.__class__.__mro__>>",
        "}} >> << {{",
        "<# comment #> <% if %>",
    ],
)
def test_values_are_data_never_templates(hostile):
    context = {**CONTEXT, "prompt": hostile}

    rendered = render_request({"exact": "<<prompt>>", "inside": "say: <<prompt>>!"}, context)

    assert rendered == {"exact": hostile, "inside": f"say: {hostile}!"}


def test_a_missing_variable_fails_naming_it():
    with pytest.raises(TemplateError, match=r"request_schema\.input\.style: <<style>> has no value"):
        render_request({"input": {"style": "<<style>>"}}, CONTEXT)


def test_a_missing_variable_inside_text_fails_naming_it():
    with pytest.raises(TemplateError, match="<<style>> has no value"):
        render_request({"t": "in the style of <<style>>"}, CONTEXT)


def test_old_style_placeholders_are_refused_with_a_hint():
    with pytest.raises(TemplateError, match=r"'\{\{prompt\}\}' is the old placeholder style; write '<<prompt>>'"):
        render_request({"prompt": "{{prompt}}"}, CONTEXT)


def test_the_sandbox_blocks_python_internals():
    with pytest.raises(TemplateError, match="not allowed|has no value"):
        render_request({"x": "<<prompt.__class__.__mro__[1].__subclasses__()>>"}, CONTEXT)


def test_syntax_errors_name_the_place():
    with pytest.raises(TemplateError, match=r"request_schema\.x: invalid placeholder"):
        render_request({"x": "<<prompt|>>"}, CONTEXT)


def test_variables_are_found_with_defaults_marked_optional():
    required, optional = template_variables(
        {"a": "<<prompt>>", "b": ["<<image_url>>"], "c": "<<seed|default(1)>>", "d": "x <<style>> y"}
    )

    assert required == {"prompt", "image_url", "style"}
    assert optional == {"seed"}


def test_a_variable_defaulted_in_one_place_but_bare_in_another_is_required():
    required, optional = template_variables({"a": "<<seed|default(1)>>", "b": "<<seed>>"})

    assert required == {"seed"} and optional == set()


def test_saving_a_schema_with_an_unprovided_variable_is_refused():
    with pytest.raises(TemplateError, match=r"<<quality>>.*Built-in variables: callback_url"):
        check_schema_variables({"prompt": "<<prompt>>", "q": "<<quality>>"}, provided={"duration"})

    check_schema_variables({"prompt": "<<prompt>>", "q": "<<quality>>"}, provided={"quality"})
