"""What the provider commands print: the model table, and a setup's report of what changed."""

from django.core.management.base import CommandError

from apps.ai_providers.models import AIModel


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
