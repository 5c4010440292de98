"""Rendering ``AIModel.request_schema``: the provider's request body with ``<<var>>`` placeholders.

Rules (README "Adding a model" repeats them for users):

- A string that is exactly one placeholder becomes the value with its own type:
  ``"duration": "<<duration>>"`` → ``8``; ``"image_urls": "<<image_urls>>"`` → a list;
  ``["<<image_url>>"]`` stays a one-element list.
- A placeholder inside a longer string is interpolated as text: ``"A photo of <<prompt>>"``.
- Jinja2 filters and defaults work: ``<<seed|default(42)>>``, ``<<prompt|upper>>``.
- Values are data, never templates: a prompt containing ``<<``, ``{{`` or ``{%`` is sent literally.
- An unresolved placeholder is never sent: rendering raises ``TemplateError`` naming the variable.
- ``{{name}}`` (the old style) is refused with a hint to write ``<<name>>``.

Rendering runs in Jinja2's sandbox: a schema cannot reach Python internals.
"""

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, UndefinedError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment, SecurityError

# Variables Genbox itself supplies to every rendering (on top of the model's parameters).
# The source image and the inpainting mask, in the form each provider takes them: a URL to fetch (Kie.ai),
# the name of a file uploaded to the server (ComfyUI) or the file inline as base64 (A1111, Kandinsky).
SOURCE_IMAGE_VARIABLES = frozenset({"image_url", "image_urls", "image_name", "image_base64"})
MASK_VARIABLES = frozenset({"mask_url", "mask_urls", "mask_name", "mask_base64"})
CONTEXT_VARIABLES = frozenset(
    {"prompt", "negative_prompt", "seed", "callback_url", "width", "height"} | SOURCE_IMAGE_VARIABLES | MASK_VARIABLES
)

_env = SandboxedEnvironment(
    variable_start_string="<<",
    variable_end_string=">>",
    # Statements and comments are not part of the template language here; pick delimiters nobody writes.
    block_start_string="<%%",
    block_end_string="%%>",
    comment_start_string="<##",
    comment_end_string="##>",
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
)
_EXACT_PLACEHOLDER = re.compile(r"^\s*<<(?P<expr>(?:(?!<<|>>).)+)>>\s*$", re.DOTALL)
_OLD_STYLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)[^}]*\}\}")


# Compiling is most of the cost of rendering; a model's few template strings are compiled once per process.
_compile_expression = lru_cache(maxsize=4096)(lambda expr: _env.compile_expression(expr, undefined_to_none=False))
_compile_text = lru_cache(maxsize=4096)(_env.from_string)


class TemplateError(ValueError):
    """The schema cannot be rendered; ``str(exc)`` names the place and the variable."""


def _where(path: str) -> str:
    return f"request_schema{path}" if path else "request_schema"


def _walk_strings(value: Any, path: str = ""):
    """Yield (path, string) for every string in the schema, keys excluded."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk_strings(item, f"{path}.{key}" if path else f".{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk_strings(item, f"{path}[{index}]")


def _check_old_style(path: str, text: str) -> None:
    match = _OLD_STYLE.search(text)
    if match:
        raise TemplateError(
            f"{_where(path)}: '{match.group(0)}' is the old placeholder style; write '<<{match.group(1)}>>'."
        )


def _parse(path: str, text: str) -> nodes.Template:
    _check_old_style(path, text)
    try:
        return _env.parse(text)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{_where(path)}: invalid placeholder in {text!r}: {exc.message}") from exc


def _optional_names(tree: nodes.Template) -> set[str]:
    """Names used only as the subject of a ``default`` filter: the template supplies their value itself."""
    defaulted = {id(node.node) for node in tree.find_all(nodes.Filter) if node.name in ("default", "d")}
    always_defaulted: dict[str, bool] = {}
    for name in tree.find_all(nodes.Name):
        always_defaulted[name.name] = always_defaulted.get(name.name, True) and id(name) in defaulted
    return {name for name, only_defaulted in always_defaulted.items() if only_defaulted}


def template_variables(schema: Any) -> tuple[set[str], set[str]]:
    """The variables a schema uses: ``(required, optional)``. Optional ones have a ``default`` in the schema.

    Raises ``TemplateError`` for old-style ``{{name}}`` placeholders and syntax errors.
    """
    required: set[str] = set()
    optional: set[str] = set()
    for path, text in _walk_strings(schema):
        if "<<" not in text and "{{" not in text:
            continue
        tree = _parse(path, text)
        names = meta.find_undeclared_variables(tree)
        soft = _optional_names(tree)
        optional |= soft
        required |= names - soft
    return required, optional - required


def template_defaults(schema: Any) -> dict[str, Any]:
    """The constant defaults written in the schema: ``<<steps|default(20)>>`` → ``{"steps": 20}``."""
    defaults: dict[str, Any] = {}
    for path, text in _walk_strings(schema):
        if "<<" not in text:
            continue
        for node in _parse(path, text).find_all(nodes.Filter):
            if node.name in ("default", "d") and isinstance(node.node, nodes.Name) and node.args:
                if isinstance(node.args[0], nodes.Const):
                    defaults.setdefault(node.node.name, node.args[0].value)
    return defaults


def check_schema_variables(schema: Any, provided: set[str]) -> None:
    """Raise ``TemplateError`` if the schema needs a variable that is in neither ``provided`` nor the context."""
    required, _ = template_variables(schema)
    missing = sorted(required - provided - CONTEXT_VARIABLES)
    if missing:
        names = ", ".join(f"<<{name}>>" for name in missing)
        raise TemplateError(
            f"request_schema uses {names}, which no parameter in parameters_schema and no built-in variable "
            f"provides. Built-in variables: {', '.join(sorted(CONTEXT_VARIABLES))}."
        )


def render_request(schema: Any, context: dict[str, Any]) -> Any:
    """Render the schema with ``context``; returns a new JSON-compatible structure.

    Raises ``TemplateError`` naming the variable when a placeholder has no value (or renders to None in an
    exact placeholder — a provider should never receive ``null`` where the model expected a value).
    """
    return _render(schema, context, "")


def _render(value: Any, context: dict[str, Any], path: str) -> Any:
    if isinstance(value, dict):
        return {key: _render(item, context, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, context, f"{path}[{index}]") for index, item in enumerate(value)]
    if not isinstance(value, str) or ("<<" not in value and "{{" not in value):
        return value
    _check_old_style(path, value)
    exact = _EXACT_PLACEHOLDER.match(value)
    try:
        if exact:
            result = _compile_expression(exact.group("expr"))(**context)
            if isinstance(result, Undefined):
                raise TemplateError(f"{_where(path)}: {_missing(result._undefined_name)}")
            if result is None:
                raise TemplateError(f"{_where(path)}: <<{exact.group('expr').strip()}>> has no value.")
            return result
        return _compile_text(value).render(**context)
    except UndefinedError as exc:
        raise TemplateError(f"{_where(path)}: {_undefined_message(exc)}") from exc
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{_where(path)}: invalid placeholder in {value!r}: {exc.message}") from exc
    except SecurityError as exc:
        raise TemplateError(f"{_where(path)}: not allowed in a placeholder: {exc}") from exc


def _missing(name: str | None) -> str:
    return f"<<{name}>> has no value: pass it in generation_config or give it a default."


def _undefined_message(exc: UndefinedError) -> str:
    match = re.search(r"'([^']+)' is undefined", str(exc))
    return _missing(match.group(1)) if match else str(exc)
