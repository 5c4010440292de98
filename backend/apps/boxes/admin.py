from django.contrib import admin
from django.db.models import Count

from .models import Box
from .services import box_delete


@admin.register(Box)
class BoxAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "owner", "asset_count", "created_at"]
    list_select_related = ["owner"]
    search_fields = ["name", "description", "owner__username"]
    raw_id_fields = ["owner"]
    readonly_fields = ["created_at", "updated_at"]
    date_hierarchy = "created_at"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(asset_count=Count("assets"))

    @admin.display(ordering="asset_count", description="assets")
    def asset_count(self, box: Box) -> int:
        return box.asset_count

    def delete_model(self, request, obj: Box) -> None:
        box_delete(box=obj)

    def delete_queryset(self, request, queryset) -> None:
        for box in queryset:
            box_delete(box=box)
