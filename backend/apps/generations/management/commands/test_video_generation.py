from ._generate import GenerationCommand


class Command(GenerationCommand):
    help = "Generate a video through the broker and a worker (from --image, or a sample image), showing progress."
    model_type = "VIDEO"
    default_prompt = "Beautiful cinematic movement"
