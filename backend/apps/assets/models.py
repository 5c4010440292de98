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
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # GET /api/boxes/{id}/assets/ — newest first, optionally by status / type / source.
            models.Index(fields=["box", "-created_at"], name="asset_box_created_idx"),
            models.Index(fields=["box", "status", "-created_at"], name="asset_box_status_created_idx"),
            models.Index(fields=["box", "asset_type", "-created_at"], name="asset_box_type_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_asset_type_display()} #{self.pk} ({self.get_status_display()})"
