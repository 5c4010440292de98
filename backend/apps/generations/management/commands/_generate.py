"""What test_generation and test_video_generation share: a real generation through broker and worker."""

import json
import shutil
import time
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.ai_providers.models import AIModel
from apps.assets.media.samples import sample_png
from apps.assets.models import Asset
from apps.assets.services import asset_create_upload
from apps.assets.storage import file_url
from apps.generations.start import generation_start, needs_source_image


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


def follow(asset: Asset, *, timeout: float, write, interval: float = 1.0) -> Asset:
    """Print a progress line until the asset is COMPLETED or FAILED; raise ``CommandError`` on failure."""
    started = time.monotonic()
    width = shutil.get_terminal_size((100, 20)).columns
    last = ""
    while True:
        asset.refresh_from_db()
        elapsed = time.monotonic() - started
        progress = f" {asset.progress * 100:.0f}%" if asset.progress is not None else ""
        task = f" task {asset.external_task_id}" if asset.external_task_id else ""
        line = f"[{elapsed:5.0f}s] asset {asset.pk}: {asset.status}{progress}{task}"[: width - 1]
        if line != last:
            write(line)
            last = line
        if asset.status == Asset.Status.COMPLETED:
            return asset
        if asset.status == Asset.Status.FAILED:
            raise CommandError(f"asset {asset.pk} failed: {asset.error_message}")
        if elapsed > timeout:
            raise CommandError(
                f"asset {asset.pk} is still {asset.status} after {timeout:g} s. Is a Celery worker running? "
                "(make run starts one; or: celery -A config worker)"
            )
        time.sleep(interval)


def cli_box():
    """The box command-line test generations go to (user ``genbox-cli``, who cannot log in)."""
    from django.contrib.auth import get_user_model

    from apps.boxes.models import Box

    user, created = get_user_model().objects.get_or_create(username="genbox-cli")
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    box, _ = Box.objects.get_or_create(owner=user, name="Command-line tests")
    return box


def pick_model(model_id: int | None, model_type: str) -> AIModel:
    from apps.ai_providers.selectors import ai_model_list_active

    models = ai_model_list_active()
    if model_id is not None:
        model = models.filter(pk=model_id).first()
        if model is None:
            raise CommandError(f"No active AI model with id {model_id} (see: python manage.py list_ai_models)")
        return model
    model = models.filter(model_type=model_type).order_by("pk").first()
    if model is None:
        raise CommandError(f"No active {model_type} model. Add some with: python manage.py setup_kie_ai --api-key KEY")
    return model
