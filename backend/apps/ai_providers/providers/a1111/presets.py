"""AUTOMATIC1111 / Forge presets: txt2img, img2img, inpainting and upscaling models as ``AIModel`` data."""

_SIZE = {"type": "integer", "min": 64, "max": 4096}
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
