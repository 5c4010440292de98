"""Kie.ai presets: how each endpoint family answers, and the models ``setup_kie_ai`` registers.

Everything here is data that ends up on ``AIModel`` rows; the adapter has no per-family code.
"""

_JOBS_STATES = {
    "waiting": "running",
    "queuing": "running",
    "generating": "running",
    "success": "succeeded",
    "fail": "failed",
}
_SUCCESS_FLAG = {"0": "running", "1": "succeeded", "2": "failed", "3": "failed"}

KIE_FAMILIES = {
    "jobs": {
        "submit": "/api/v1/jobs/createTask",
        "poll": "/api/v1/jobs/recordInfo",
        "mapping": {
            "task_id_path": "data.taskId",
            "status_path": "data.state",
            "status_values": _JOBS_STATES,
            "result_url_paths": ["data.resultJson.resultUrls"],
            "error_paths": ["data.failMsg", "data.failCode"],
            "cost_paths": {"credits": "data.creditsConsumed", "cost_time_ms": "data.costTime"},
            "callback_field": "callBackUrl",
            "callback_task_id_path": "data.taskId",
        },
    },
    "veo": {
        "submit": "/api/v1/veo/generate",
        "poll": "/api/v1/veo/record-info",
        "mapping": {
            "task_id_path": "data.taskId",
            "status_path": "data.successFlag",
            "status_values": _SUCCESS_FLAG,
            "result_url_paths": ["data.response.resultUrls", "data.response.originUrls"],
            "error_paths": ["data.errorMessage", "data.errorCode"],
            "callback_field": "callBackUrl",
            "callback_task_id_path": "data.taskId",
        },
    },
    "runway": {
        "submit": "/api/v1/runway/generate",
        "poll": "/api/v1/runway/record-detail",
        "mapping": {
            "task_id_path": "data.taskId",
            "status_path": "data.state",
            "status_values": {
                "wait": "running",
                "queueing": "running",
                "generating": "running",
                "success": "succeeded",
                "fail": "failed",
            },
            "result_url_paths": ["data.videoInfo.videoUrl"],
            "error_paths": ["data.failMsg", "data.failCode"],
            "callback_field": "callBackUrl",
            "callback_task_id_path": "data.taskId",
        },
    },
    "gpt4o": {
        "submit": "/api/v1/gpt4o-image/generate",
        "poll": "/api/v1/gpt4o-image/record-info",
        "mapping": {
            "task_id_path": "data.taskId",
            "status_path": "data.status",
            "status_values": {
                "GENERATING": "running",
                "SUCCESS": "succeeded",
                "CREATE_TASK_FAILED": "failed",
                "GENERATE_FAILED": "failed",
            },
            "result_url_paths": ["data.response.resultUrls"],
            "error_paths": ["data.errorMessage"],
            "progress_path": "data.progress",
            "callback_field": "callBackUrl",
            "callback_task_id_path": "data.taskId",
        },
    },
    "flux": {
        "submit": "/api/v1/flux/kontext/generate",
        "poll": "/api/v1/flux/kontext/record-info",
        "mapping": {
            "task_id_path": "data.taskId",
            "status_path": "data.successFlag",
            "status_values": _SUCCESS_FLAG,
            "result_url_paths": ["data.response.resultImageUrl", "data.response.resultUrls"],
            "error_paths": ["data.errorMessage"],
            "callback_field": "callBackUrl",
            "callback_task_id_path": "data.taskId",
        },
    },
}

_IMAGE_SIZE = {
    "type": "select",
    "label": "Aspect ratio",
    "default": "1:1",
    "options": ["1:1", "16:9", "9:16", "4:3", "3:4"],
}
_OUTPUT_FORMAT = {"type": "select", "label": "Output format", "default": "png", "options": ["png", "jpeg"]}

# The order is part of the contract: on a fresh database model ids follow it (the quickstart uses id 2).
KIE_MODELS = [
    {
        "name": "Nano Banana",
        "model_type": "IMAGE",
        "family": "jobs",
        "request_schema": {
            "model": "google/nano-banana",
            "input": {"prompt": "<<prompt>>", "output_format": "<<output_format>>", "image_size": "<<image_size>>"},
        },
        "parameters_schema": {"output_format": _OUTPUT_FORMAT, "image_size": _IMAGE_SIZE},
    },
    {
        "name": "Veo 3.1 Fast image-to-video",
        "model_type": "VIDEO",
        "family": "veo",
        "request_schema": {
            "prompt": "<<prompt>>",
            "imageUrls": "<<image_urls>>",
            "model": "veo3_fast",
            "generationType": "FIRST_AND_LAST_FRAMES_2_VIDEO",
            "aspect_ratio": "<<aspect_ratio>>",
            "enableTranslation": True,
        },
        "parameters_schema": {
            "aspect_ratio": {
                "type": "select",
                "label": "Aspect ratio",
                "default": "16:9",
                "options": ["16:9", "9:16", "Auto"],
            },
            "resolution": {
                "type": "select",
                "label": "Resolution",
                "default": "720p",
                "options": ["720p"],
                "description": "Veo renders 720p; 1080p is a separate upgrade step.",
            },
            "duration": {
                "type": "select",
                "label": "Duration (s)",
                "default": "8",
                "options": ["8"],
                "description": "Veo clips are 8 seconds long.",
            },
        },
    },
    {
        "name": "Nano Banana Edit",
        "model_type": "IMAGE",
        "family": "jobs",
        "request_schema": {
            "model": "google/nano-banana-edit",
            "input": {
                "prompt": "<<prompt>>",
                "image_urls": "<<image_urls>>",
                "output_format": "<<output_format>>",
                "image_size": "<<image_size>>",
            },
        },
        "parameters_schema": {"output_format": _OUTPUT_FORMAT, "image_size": _IMAGE_SIZE},
    },
    {
        "name": "Kling 2.6 image-to-video",
        "model_type": "VIDEO",
        "family": "jobs",
        "request_schema": {
            "model": "kling-2.6/image-to-video",
            "input": {
                "prompt": "<<prompt>>",
                "image_urls": ["<<image_url>>"],
                "sound": "<<sound>>",
                "duration": "<<duration>>",
            },
        },
        "parameters_schema": {
            "duration": {"type": "select", "label": "Duration (s)", "default": "5", "options": ["5", "10"]},
            "sound": {"type": "boolean", "label": "Generate sound", "default": False},
        },
    },
    {
        "name": "Veo 3.1 Fast text-to-video",
        "model_type": "VIDEO",
        "family": "veo",
        "request_schema": {
            "prompt": "<<prompt>>",
            "model": "veo3_fast",
            "generationType": "TEXT_2_VIDEO",
            "aspect_ratio": "<<aspect_ratio>>",
            "enableTranslation": True,
        },
        "parameters_schema": {
            "aspect_ratio": {"type": "select", "label": "Aspect ratio", "default": "16:9", "options": ["16:9", "9:16"]},
        },
    },
    {
        "name": "Runway image-to-video",
        "model_type": "VIDEO",
        "family": "runway",
        "request_schema": {
            "prompt": "<<prompt>>",
            "imageUrl": "<<image_url>>",
            "duration": "<<duration>>",
            "quality": "<<quality>>",
            "aspectRatio": "<<aspect_ratio>>",
            "waterMark": "",
        },
        "parameters_schema": {
            "duration": {"type": "select", "label": "Duration (s)", "default": 5, "options": [5, 10]},
            "quality": {
                "type": "select",
                "label": "Quality",
                "default": "720p",
                "options": ["720p", "1080p"],
                "description": "1080p only with 5-second clips.",
            },
            "aspect_ratio": {
                "type": "select",
                "label": "Aspect ratio",
                "default": "16:9",
                "options": ["16:9", "9:16", "1:1", "4:3", "3:4"],
            },
        },
    },
    {
        "name": "GPT-4o image",
        "model_type": "IMAGE",
        "family": "gpt4o",
        "request_schema": {
            "prompt": "<<prompt>>",
            "size": "<<size>>",
            "nVariants": 1,
            "filesUrl": "<<image_urls|default([])>>",
        },
        "parameters_schema": {
            "size": {"type": "select", "label": "Aspect ratio", "default": "1:1", "options": ["1:1", "3:2", "2:3"]},
        },
    },
    {
        "name": "Flux Kontext Pro",
        "model_type": "IMAGE",
        "family": "flux",
        "request_schema": {
            "prompt": "<<prompt>>",
            "inputImage": "<<image_url|default('')>>",
            "aspectRatio": "<<aspect_ratio>>",
            "outputFormat": "<<output_format>>",
            "model": "flux-kontext-pro",
        },
        "parameters_schema": {
            "aspect_ratio": {
                "type": "select",
                "label": "Aspect ratio",
                "default": "16:9",
                "options": ["21:9", "16:9", "4:3", "1:1", "3:4", "9:16"],
            },
            "output_format": {"type": "select", "label": "Output format", "default": "png", "options": ["png", "jpeg"]},
        },
    },
]


def model_fields(entry: dict) -> dict:
    """The ``AIModel`` field values of a catalogue entry."""
    family = KIE_FAMILIES[entry["family"]]
    return {
        "model_type": entry["model_type"],
        "api_endpoint": family["submit"],
        "poll_endpoint": family["poll"],
        "response_mapping": family["mapping"],
        "request_schema": entry["request_schema"],
        "parameters_schema": entry["parameters_schema"],
    }
