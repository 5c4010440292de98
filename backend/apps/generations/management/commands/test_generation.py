from ._generate import GenerationCommand


class Command(GenerationCommand):
    help = "Generate an image through the broker and a worker, showing progress; exits non-zero on failure."
    model_type = "IMAGE"
    default_prompt = "A lighthouse on a cliff at sunset, oil painting"
