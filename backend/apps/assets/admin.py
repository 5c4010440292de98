from django.contrib import admin
from django.utils.html import format_html

from .models import Asset
from .services import asset_delete
from .storage import file_url


def _preview(asset: Asset, size: int):
    url = file_url(asset.file.name)
    if not url:
        return "—"
    if asset.asset_type == Asset.AssetType.VIDEO:
        return format_html('<video src="{}" width="{}" controls preload="metadata" muted></video>', url, size)
    return format_html(
        '<a href="{}" target="_blank"><img src="{}" style="max-width:{}px;max-height:{}px" alt=""></a>',
        url,
        url,
        size,
        size,
    )


@admin.register(Asset)
class AssetAdmin(admin.ModelAdmin):
    list_display = ["id", "thumbnail", "box", "asset_type", "source", "status", "short_prompt", "created_at"]
    list_display_links = ["id", "thumbnail"]
    list_filter = ["status", "asset_type", "source", "stage", "created_at"]
    search_fields = ["prompt_text", "external_task_id", "sha256"]
    list_select_related = ["box", "ai_model__provider"]
    raw_id_fields = ["box", "parent_asset", "ai_model"]
    date_hierarchy = "created_at"
    _pipeline = [
        "stage",
        "progress",
        "due_at",
        "lease_until",
        "deadline_at",
        "submit_attempts",
        "polls_sent",
        "poll_failures_in_a_row",
        "store_failures",
        "last_error",
    ]
    _timeline = ["created_at", "started_at", "submitted_at", "provider_finished_at", "finished_at", "updated_at"]
    _file = ["file", "mime_type", "file_size", "width", "height", "sha256"]
    # The pipeline owns these; editing them by hand would break its invariants.
    readonly_fields = ["preview", "request_payload", *_file, *_pipeline, *_timeline]
    fieldsets = [
        (None, {"fields": ["box", "asset_type", "source", "status", "prompt_text", "preview"]}),
        (
            "Generation",
            {
                "fields": [
                    "ai_model",
                    "parent_asset",
                    "generation_config",
                    "external_task_id",
                    "error_message",
                    "request_payload",
                ]
            },
        ),
        ("Pipeline", {"fields": _pipeline, "classes": ["collapse"]}),
        ("File", {"fields": [*_file, "metadata"]}),
        ("Timeline", {"fields": _timeline}),
    ]

    @admin.display(description="preview")
    def thumbnail(self, asset: Asset):
        return _preview(asset, 80)

    @admin.display(description="preview")
    def preview(self, asset: Asset):
        return _preview(asset, 480)

    @admin.display(description="prompt")
    def short_prompt(self, asset: Asset) -> str:
        return asset.prompt_text if len(asset.prompt_text) <= 60 else asset.prompt_text[:57] + "…"

    def delete_model(self, request, obj: Asset) -> None:
        asset_delete(asset=obj)

    def delete_queryset(self, request, queryset) -> None:
        for asset in queryset:
            asset_delete(asset=asset)
