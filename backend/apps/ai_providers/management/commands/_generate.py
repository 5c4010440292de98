"""What test_generation and test_video_generation share: a real generation through broker and worker."""

import json
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.ai_providers.demo import sample_png
from apps.ai_providers.pipeline import generation_start, needs_source_image
from apps.assets.services import asset_create_upload
from apps.assets.storage import file_url

from ._output import cli_box, follow, pick_model


class GenerationCommand(BaseCommand):
    model_type = "IMAGE"
    default_prompt = ""

    def add_arguments(self, parser):
        parser.add_argument("--model", type=int, help="AI model id (default: the first active one of this type).")
        parser.add_argument("--prompt", default=self.default_prompt)
        parser.add_argument("--image", help="Source image (PNG/JPEG/WEBP) for models that take one.")
        parser.add_argument("--config", default="{}", help='generation_config as JSON, e.g. \'{"duration": "5"}\'.')
        parser.add_argument("--timeout", type=float, default=1800, help="Seconds to wait (default 1800).")

    def handle(self, *args, **options):
        try:
            config = json.loads(options["config"])
        except ValueError as exc:
            raise CommandError(f"--config is not JSON: {exc}") from exc
        model = pick_model(options["model"], self.model_type)
        box = cli_box()
        parent = None
        if options["image"] or needs_source_image(model):
            parent = _upload_source(box, options["image"])
            self.stdout.write(f"Source image: asset {parent.pk} ({parent.width}×{parent.height})")
        self.stdout.write(
            f"Generating with {model.provider.name} / {model.name} (id {model.pk}): {options['prompt']!r}"
        )
        try:
            with transaction.atomic():
                [asset] = generation_start(box=box, model=model, prompt=options["prompt"], parent=parent, config=config)
        except ValidationError as exc:
            raise CommandError(f"rejected: {exc.message_dict if hasattr(exc, 'error_dict') else exc.messages}") from exc
        asset = follow(asset, timeout=options["timeout"], write=self.stdout.write)
        self.stdout.write(
            self.style.SUCCESS(
                f"COMPLETED: asset {asset.pk}, {asset.mime_type}, {asset.width}×{asset.height}, {asset.file_size} bytes"
            )
        )
        self.stdout.write(f"  stored as {asset.file.name}")
        try:
            self.stdout.write(f"  file: {asset.file.path}")  # local storage
        except NotImplementedError:
            self.stdout.write(f"  url: {file_url(asset.file.name)}")


def _upload_source(box, path: str | None):
    if path:
        source = Path(path)
        if not source.is_file():
            raise CommandError(f"--image: no file at {path}")
        data, name = source.read_bytes(), source.name
    else:
        data, name = sample_png(), "genbox-sample.png"
    upload = TemporaryUploadedFile(name, "application/octet-stream", len(data), None)
    upload.write(data)
    upload.seek(0)
    try:
        return asset_create_upload(box=box, uploaded_file=upload, prompt_text="test source image")
    except ValidationError as exc:
        raise CommandError(f"--image: {' '.join(exc.messages)}") from exc
