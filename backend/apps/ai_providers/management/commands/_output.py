"""Shared bits of the AI provider commands: the model table and following a generation to its end."""

import shutil
import time

from django.core.management.base import CommandError

from apps.ai_providers.models import AIModel
from apps.assets.models import Asset


def model_table(models) -> str:
    rows = [("ID", "PROVIDER", "NAME", "TYPE", "ACTIVE", "ENDPOINT")]
    for model in models:
        rows.append(
            (
                str(model.pk),
                model.provider.name,
                model.name,
                model.model_type,
                "yes" if model.is_active else "no",
                model.api_endpoint,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def install_kie_catalogue(command, **arguments) -> None:
    """Run ``kie_catalogue_install`` for a command and print what changed and the provider's models."""
    from apps.ai_providers.services import kie_catalogue_install

    install(command, kie_catalogue_install, **arguments)


def install(command, install_function, **arguments) -> None:
    """Run a ``services`` install function for a command; print what changed and the provider's models."""
    from django.core.exceptions import ValidationError

    try:
        provider, report = install_function(**arguments)
    except ValidationError as exc:
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        raise CommandError(f"refused by the provider and model checks: {detail}") from exc
    for line in report or ["Nothing to change."]:
        command.stdout.write(line)
    command.stdout.write("")
    command.stdout.write(model_table(provider.models.select_related("provider").order_by("pk")))


def all_models():
    return AIModel.objects.select_related("provider").order_by("pk")


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
