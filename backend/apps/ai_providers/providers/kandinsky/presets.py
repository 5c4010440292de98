"""Kandinsky 2.2 service presets: txt2img and img2img models as ``AIModel`` data."""

_SIZE = {"type": "integer", "min": 64, "max": 4096}
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
