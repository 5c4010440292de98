import uuid
from pathlib import PurePosixPath

from django.db import models


def asset_file_path(asset: "Asset", filename: str) -> str:
    """Storage key of an asset's file: the box, a random name, and the extension of the detected type.

    The client's file name is never part of the key (it is kept in ``metadata["original_filename"]``).
    """
    return f"boxes/{asset.box_id}/{uuid.uuid4().hex}{PurePosixPath(filename).suffix.lower()}"


class Asset(models.Model):
    """An image or video in a box: an upload, or the result of a generation with its lineage."""

    class AssetType(models.TextChoices):
        IMAGE = "IMAGE", "Image"
        VIDEO = "VIDEO", "Video"

    class Source(models.TextChoices):
        UPLOAD = "UPLOAD", "Upload"
        GENERATION = "GENERATION", "Generation"

    class Status(models.TextChoices):
        PENDING = "PENDING", "Pending"
        PROCESSING = "PROCESSING", "Processing"
        COMPLETED = "COMPLETED", "Completed"
        FAILED = "FAILED", "Failed"

    class Stage(models.TextChoices):
        """Where a generation is inside the pipeline (apps.generations.lifecycle); finer than ``status``."""

        QUEUED = "QUEUED", "Queued for submission"  # status PENDING
        SUBMITTING = "SUBMITTING", "Being submitted"  # status PROCESSING; a request may be on the wire
        POLLING = "POLLING", "Running at the provider"  # status PROCESSING; external_task_id known
        STORING = "STORING", "Storing the result"  # status PROCESSING
        DONE = "DONE", "Done"  # status COMPLETED or FAILED

    box = models.ForeignKey("boxes.Box", on_delete=models.CASCADE, related_name="assets")
    asset_type = models.CharField(max_length=10, choices=AssetType.choices)
    source = models.CharField(max_length=12, choices=Source.choices)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    prompt_text = models.TextField(blank=True)
    ai_model = models.ForeignKey(
        "ai_providers.AIModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="assets"
    )
    parent_asset = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    generation_config = models.JSONField(default=dict, blank=True)
    external_task_id = models.CharField(max_length=255, blank=True, db_index=True)

    file = models.FileField(upload_to=asset_file_path, max_length=500, blank=True)
    mime_type = models.CharField(max_length=100, blank=True)
    file_size = models.BigIntegerField(null=True, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)

    error_message = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    # Generation lifecycle state (apps/generations/lifecycle.py): the database, not the broker, is the source of truth.
    stage = models.CharField(max_length=12, choices=Stage.choices, default=Stage.DONE)
    progress = models.FloatField(null=True, blank=True, help_text="0–1, when the provider reports it.")
    due_at = models.DateTimeField(
        null=True, blank=True, help_text="When the next step (a submission or a poll) is due; empty when none is."
    )
    lease_token = models.CharField(
        max_length=32, blank=True, help_text="Which worker holds the asset (submitting, polling or storing)."
    )
    lease_until = models.DateTimeField(null=True, blank=True, help_text="Until when; after that it is free again.")
    deadline_at = models.DateTimeField(null=True, blank=True, help_text="Fails with a timeout after this.")
    submit_attempts = models.PositiveIntegerField(default=0, help_text="Submissions started (retries included).")
    polls_sent = models.PositiveIntegerField(default=0, help_text="Status queries sent to the provider.")
    poll_failures_in_a_row = models.PositiveIntegerField(
        default=0, help_text="Status queries failed since the last good one."
    )
    store_failures = models.PositiveIntegerField(default=0, help_text="Failed attempts to save the result to storage.")
    unreachable_since = models.DateTimeField(
        null=True, blank=True, help_text="Since when the provider refuses connections, while submissions retry."
    )
    last_error = models.TextField(blank=True, help_text="Why the last attempt failed while the generation goes on.")
    callback_token = models.CharField(max_length=64, unique=True, null=True, blank=True)
    awaits_callback = models.BooleanField(
        default=False, help_text="The provider will call back; polls are a sparse safety net meanwhile."
    )
    request_payload = models.JSONField(null=True, blank=True, help_text="The rendered request, secrets redacted.")

    created_at = models.DateTimeField(auto_now_add=True)  # queued
    started_at = models.DateTimeField(null=True, blank=True)  # a worker took it
    submitted_at = models.DateTimeField(null=True, blank=True)  # the provider accepted it
    provider_finished_at = models.DateTimeField(null=True, blank=True)  # the provider reported the end
    finished_at = models.DateTimeField(null=True, blank=True)  # stored (or failed)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # GET /api/boxes/{id}/assets/ — newest first, optionally by status / type / source.
            models.Index(fields=["box", "-created_at"], name="asset_box_created_idx"),
            models.Index(fields=["box", "status", "-created_at"], name="asset_box_status_created_idx"),
            models.Index(fields=["box", "asset_type", "-created_at"], name="asset_box_type_created_idx"),
            # The poll schedule: a model's recent provider times (lifecycle.typical_provider_seconds).
            models.Index(
                fields=["ai_model", "-provider_finished_at"],
                name="asset_model_finished_idx",
                condition=models.Q(status="COMPLETED"),
            ),
            # Polls claimed in batches and the sweeper: unfinished generations whose next step is due.
            models.Index(
                fields=["stage", "due_at"],
                name="asset_stage_due_idx",
                condition=~models.Q(stage="DONE"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_asset_type_display()} #{self.pk} ({self.get_status_display()})"
