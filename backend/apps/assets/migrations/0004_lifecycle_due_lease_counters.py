"""The lifecycle's columns say one thing each: ``next_poll_at`` meant a due time or a lease depending on the
stage; it becomes ``due_at``, and a lease gets ``lease_token`` and ``lease_until``. Counters are renamed for
what they count, and the last error of a generation that goes on is kept in ``last_error``."""

from django.db import migrations, models
from django.utils import timezone


def split_leases(apps, schema_editor):
    """Generations in flight during the upgrade: in SUBMITTING and STORING the old column held a lease (one
    without an end ends now, so that the sweeper can take the asset back)."""
    Asset = apps.get_model("assets", "Asset")
    for asset in Asset.objects.filter(stage__in=["SUBMITTING", "STORING"]).only("pk", "due_at"):
        Asset.objects.filter(pk=asset.pk).update(
            lease_token="upgraded", lease_until=asset.due_at or timezone.now(), due_at=None
        )


class Migration(migrations.Migration):
    dependencies = [
        ("assets", "0003_asset_awaits_callback"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="asset", name="asset_stage_due_idx"),
        migrations.RenameField(model_name="asset", old_name="next_poll_at", new_name="due_at"),
        migrations.RenameField(model_name="asset", old_name="poll_count", new_name="polls_sent"),
        migrations.RenameField(model_name="asset", old_name="poll_errors", new_name="poll_failures_in_a_row"),
        migrations.AlterField(
            model_name="asset",
            name="due_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the next step (a submission or a poll) is due; empty when none is.",
                null=True,
            ),
        ),
        migrations.AlterField(
            model_name="asset",
            name="polls_sent",
            field=models.PositiveIntegerField(default=0, help_text="Status queries sent to the provider."),
        ),
        migrations.AlterField(
            model_name="asset",
            name="poll_failures_in_a_row",
            field=models.PositiveIntegerField(default=0, help_text="Status queries failed since the last good one."),
        ),
        migrations.AlterField(
            model_name="asset",
            name="submit_attempts",
            field=models.PositiveIntegerField(default=0, help_text="Submissions started (retries included)."),
        ),
        migrations.AddField(
            model_name="asset",
            name="lease_token",
            field=models.CharField(
                blank=True, help_text="Which worker holds the asset (submitting, polling or storing).", max_length=32
            ),
        ),
        migrations.AddField(
            model_name="asset",
            name="lease_until",
            field=models.DateTimeField(blank=True, help_text="Until when; after that it is free again.", null=True),
        ),
        migrations.AddField(
            model_name="asset",
            name="store_failures",
            field=models.PositiveIntegerField(default=0, help_text="Failed attempts to save the result to storage."),
        ),
        migrations.AddField(
            model_name="asset",
            name="unreachable_since",
            field=models.DateTimeField(
                blank=True,
                help_text="Since when the provider refuses connections, while submissions retry.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="asset",
            name="last_error",
            field=models.TextField(blank=True, help_text="Why the last attempt failed while the generation goes on."),
        ),
        migrations.RunPython(split_leases, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="asset",
            index=models.Index(
                condition=models.Q(("stage", "DONE"), _negated=True),
                fields=["stage", "due_at"],
                name="asset_stage_due_idx",
            ),
        ),
    ]
