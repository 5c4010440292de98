"""Presets for local GPU servers: ComfyUI workflow templates, AUTOMATIC1111 and Kandinsky 2.2 models.

All of it is data that ends up on ``AIModel`` rows (``services.provider_install``). ComfyUI models come from
API-format workflow files: a placeholder's ``default`` in the workflow (``<<steps|default(20)>>``) makes it
an option, described with the ranges and choices below when its name is known.
"""

import json
from pathlib import Path
from typing import Any

from .templating import CONTEXT_VARIABLES, template_defaults, template_variables

COMFYUI_WORKFLOWS = Path(__file__).resolve().parent / "workflows" / "comfyui"
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


# --- AUTOMATIC1111 -----------------------------------------------------------------------------------

_A1111_SAMPLERS = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE", "DDIM", "UniPC"]
_A1111_COMMON_PARAMETERS = {
    "steps": {"type": "integer", "label": "Steps", "min": 1, "max": 150, "default": 25},
    "cfg_scale": {"type": "number", "label": "CFG scale", "min": 1, "max": 30, "default": 7.0},
    "sampler_name": {"type": "select", "label": "Sampler", "options": _A1111_SAMPLERS, "default": "Euler a"},
    "width": {**_SIZE, "label": "Width", "max": 2048, "default": 1024},
    "height": {**_SIZE, "label": "Height", "max": 2048, "default": 1024},
}
_A1111_COMMON_REQUEST = {
    "prompt": "<<prompt>>",
    "negative_prompt": "<<negative_prompt>>",
    "seed": "<<seed>>",
    "steps": "<<steps>>",
    "cfg_scale": "<<cfg_scale>>",
    "sampler_name": "<<sampler_name>>",
    "width": "<<width>>",
    "height": "<<height>>",
    "batch_size": 1,
    "n_iter": 1,
}
_DENOISING = {"type": "number", "label": "Denoising strength", "min": 0, "max": 1}
A1111_MODELS = [
    {
        "name": "Stable Diffusion txt2img",
        "model_type": "IMAGE",
        "api_endpoint": "/sdapi/v1/txt2img",
        "request_schema": _A1111_COMMON_REQUEST,
        "parameters_schema": _A1111_COMMON_PARAMETERS,
    },
    {
        "name": "Stable Diffusion img2img",
        "model_type": "IMAGE",
        "api_endpoint": "/sdapi/v1/img2img",
        "request_schema": {
            **_A1111_COMMON_REQUEST,
            "init_images": ["<<image_base64>>"],
            "denoising_strength": "<<denoising_strength>>",
            "resize_mode": 0,
        },
        "parameters_schema": {**_A1111_COMMON_PARAMETERS, "denoising_strength": _DENOISING},
    },
    {
        "name": "Stable Diffusion inpainting",
        "model_type": "IMAGE",
        "api_endpoint": "/sdapi/v1/img2img",
        "request_schema": {
            **_A1111_COMMON_REQUEST,
            "init_images": ["<<image_base64>>"],
            "mask": "<<mask_base64>>",
            "denoising_strength": "<<denoising_strength>>",
            "mask_blur": "<<mask_blur>>",
            "inpainting_fill": 1,
            "inpaint_full_res": False,
            "resize_mode": 0,
        },
        "parameters_schema": {
            **_A1111_COMMON_PARAMETERS,
            "denoising_strength": _DENOISING,
            "mask_blur": {"type": "integer", "label": "Mask blur", "min": 0, "max": 64, "default": 4},
        },
    },
    {
        "name": "Upscale (extras)",
        "model_type": "IMAGE",
        "api_endpoint": "/sdapi/v1/extra-single-image",
        "resizes_source": True,
        "request_schema": {
            "image": "<<image_base64>>",
            "resize_mode": 0,
            "upscaling_resize": "<<scale>>",
            "upscaler_1": "<<upscaler>>",
        },
        "parameters_schema": {
            "scale": {"type": "number", "label": "Scale", "min": 1, "max": 8, "default": 2},
            "upscaler": {
                "type": "select",
                "label": "Upscaler",
                "options": ["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B", "SwinIR 4x", "Lanczos", "Nearest"],
                "default": "R-ESRGAN 4x+",
            },
        },
    },
]

# --- Kandinsky 2.2 service ---------------------------------------------------------------------------

_KANDINSKY_PARAMETERS = {
    "width": {**_SIZE, "label": "Width", "max": 2048, "default": 768},
    "height": {**_SIZE, "label": "Height", "max": 2048, "default": 768},
    "num_inference_steps": {"type": "integer", "label": "Steps", "min": 1, "max": 200, "default": 50},
    "guidance_scale": {"type": "number", "label": "Guidance scale", "min": 0, "max": 30, "default": 4.0},
    "prior_guidance_scale": {"type": "number", "label": "Prior guidance scale", "min": 0, "max": 30, "default": 1.0},
}
_KANDINSKY_REQUEST = {
    "prompt": "<<prompt>>",
    "negative_prompt": "<<negative_prompt>>",
    "width": "<<width>>",
    "height": "<<height>>",
    "num_inference_steps": "<<num_inference_steps>>",
    "guidance_scale": "<<guidance_scale>>",
    "prior_guidance_scale": "<<prior_guidance_scale>>",
    "seed": "<<seed>>",
}
KANDINSKY_MODELS = [
    {
        "name": "Kandinsky 2.2",
        "model_type": "IMAGE",
        "api_endpoint": "/generate",
        "max_prompt_length": 2000,
        "request_schema": _KANDINSKY_REQUEST,
        "parameters_schema": _KANDINSKY_PARAMETERS,
    },
    {
        "name": "Kandinsky 2.2 img2img",
        "model_type": "IMAGE",
        "api_endpoint": "/generate",
        "max_prompt_length": 2000,
        "request_schema": {**_KANDINSKY_REQUEST, "image": "<<image_base64>>", "strength": "<<strength>>"},
        "parameters_schema": {
            **_KANDINSKY_PARAMETERS,
            "strength": {"type": "number", "label": "Strength (denoise)", "min": 0, "max": 1},
        },
    },
]
