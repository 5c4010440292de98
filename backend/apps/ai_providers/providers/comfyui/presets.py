"""ComfyUI presets: the shipped workflow templates and how a workflow becomes a model.

All of it is data that ends up on ``AIModel`` rows (``services.provider_install``). ComfyUI models come from
API-format workflow files: a placeholder's ``default`` in the workflow (``<<steps|default(20)>>``) makes it
an option, described with the ranges and choices below when its name is known.
"""

import json
from pathlib import Path
from typing import Any

from apps.ai_providers.templating import CONTEXT_VARIABLES, template_defaults, template_variables

COMFYUI_WORKFLOWS = Path(__file__).resolve().parent / "workflows"
_SCALE_SIDE = {"type": "integer", "min": 0, "max": 8192, "default": 0}
# Shipped workflow templates: model name, file, and model fields beyond what the workflow says.
COMFYUI_TEMPLATES = [
    ("Flux txt2img", "flux_txt2img.json", {}),
    ("Flux img2img", "flux_img2img.json", {}),
    ("SDXL txt2img", "sdxl_txt2img.json", {}),
    (
        # Runs on any ComfyUI server, even on a CPU: the source scaled to width × height (0: keep that side's
        # size, or the aspect ratio when the other is given).
        "Image scale (no weights)",
        "image_scale.json",
        {
            "resizes_source": True,
            "parameters": {
                "width": {**_SCALE_SIDE, "label": "Width (0: keep)"},
                "height": {**_SCALE_SIDE, "label": "Height (0: keep)"},
            },
        },
    ),
]
COMFYUI_OUTPUT_NODE_TYPES = (
    "SaveImage",
    "SaveAnimatedWEBP",
    "SaveAnimatedPNG",
    "SaveVideo",
    "SaveWEBM",
    "VHS_VideoCombine",
)

_SIZE = {"type": "integer", "min": 64, "max": 4096}
# What common option names mean, for options a workflow declares only through a default.
KNOWN_PARAMETERS: dict[str, dict[str, Any]] = {
    "steps": {"type": "integer", "label": "Steps", "min": 1, "max": 150},
    "cfg": {"type": "number", "label": "CFG scale", "min": 0, "max": 30},
    "guidance": {"type": "number", "label": "Flux guidance", "min": 0, "max": 100},
    "denoise": {"type": "number", "label": "Denoise (img2img strength)", "min": 0, "max": 1},
    "width": {**_SIZE, "label": "Width"},
    "height": {**_SIZE, "label": "Height"},
    "sampler_name": {
        "type": "select",
        "label": "Sampler",
        "options": ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "uni_pc"],
    },
    "scheduler": {
        "type": "select",
        "label": "Scheduler",
        "options": ["normal", "karras", "exponential", "simple", "sgm_uniform", "beta"],
    },
    "upscale_method": {
        "type": "select",
        "label": "Scaling method",
        "options": ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],
    },
}
_TYPE_OF = {bool: "boolean", int: "integer", float: "number", str: "string"}


class WorkflowError(ValueError):
    """A workflow file that cannot become a model; ``str(exc)`` says why."""


def load_workflow(path: Path) -> dict:
    try:
        workflow = json.loads(path.read_text())
    except OSError as exc:
        raise WorkflowError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise WorkflowError(f"{path} is not JSON: {exc}") from exc
    if isinstance(workflow, dict) and "nodes" in workflow and "links" in workflow:
        raise WorkflowError(f"{path} is a UI workflow; export it in API format (ComfyUI: Workflow → Export (API)).")
    if (
        not isinstance(workflow, dict)
        or not workflow
        or not all(isinstance(node, dict) and "class_type" in node for node in workflow.values())
    ):
        raise WorkflowError(f'{path} is not an API-format workflow ({{"<id>": {{"class_type": …, "inputs": …}}}}).')
    return workflow


def output_node(workflow: dict, chosen: str | None = None) -> str:
    """The id of the node whose output is the result: ``chosen``, or the workflow's only output node."""
    if chosen is not None:
        if chosen not in workflow:
            raise WorkflowError(f"--output-node {chosen}: no such node (nodes: {', '.join(sorted(workflow))})")
        return chosen
    outputs = [node_id for node_id, node in workflow.items() if node["class_type"] in COMFYUI_OUTPUT_NODE_TYPES]
    if len(outputs) != 1:
        found = ", ".join(f"{i} ({workflow[i]['class_type']})" for i in outputs) or "none"
        raise WorkflowError(
            f"cannot tell which node's output is the result (output nodes: {found}); pass --output-node"
        )
    return outputs[0]


def workflow_parameters(workflow: dict, declared: dict | None = None) -> dict:
    """The ``parameters_schema`` of a workflow: an option per placeholder with a default, plus ``declared``.

    Raises ``WorkflowError`` when a placeholder without a default is neither built in nor declared.
    """
    if declared is not None and not isinstance(declared, dict):
        raise WorkflowError('parameters must be a JSON object: {"<option>": {"type": …}, …}')
    declared = dict(declared or {})
    required, optional = template_variables(workflow)
    missing = sorted(required - CONTEXT_VARIABLES - set(declared))
    if missing:
        names = ", ".join(f"<<{name}>>" for name in missing)
        raise WorkflowError(
            f"the workflow uses {names} without a default; give one in the workflow (<<name|default(…)>>) "
            f"or describe it with --parameters. Built-in: {', '.join(sorted(CONTEXT_VARIABLES))}"
        )
    parameters = {}
    for name, default in sorted(template_defaults(workflow).items()):
        if name not in optional or name in declared or name in ("seed", "prompt", "negative_prompt"):
            continue
        spec = dict(KNOWN_PARAMETERS.get(name) or {"type": _TYPE_OF.get(type(default), "string")})
        if spec["type"] == "select" and default not in spec["options"]:
            spec["options"] = [default, *spec["options"]]
        parameters[name] = {**spec, "default": default}
    return {**parameters, **declared}


def comfyui_model_fields(workflow: dict, *, model_type: str = "IMAGE", chosen_output: str | None = None, **extra):
    return {
        "model_type": model_type,
        "api_endpoint": "/prompt",
        "poll_endpoint": "/history",
        "request_schema": workflow,
        "parameters_schema": workflow_parameters(workflow, extra.pop("parameters", None)),
        "response_mapping": {"output_node": output_node(workflow, chosen_output)},
        **extra,
    }


def comfyui_template_models() -> list[dict]:
    """The shipped templates as model entries for ``provider_install``."""
    return [
        {"name": name, **comfyui_model_fields(load_workflow(COMFYUI_WORKFLOWS / file), **fields)}
        for name, file, fields in COMFYUI_TEMPLATES
    ]
