from django import forms
from django.contrib import admin, messages
from django.db.models import Count

from .contract import ProviderError
from .models import AIModel, AIProvider
from .registry import get_adapter


def mask_secret(value: str) -> str:
    """Show that a key is set without showing it: the last four characters of a long key, nothing of a short one."""
    if not value:
        return "not set"
    return f"set (…{value[-4:]})" if len(value) >= 16 else "set"


class AIProviderForm(forms.ModelForm):
    """The API key is write-only: never rendered back, kept when the field is left empty."""

    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave empty to keep the current key.",
    )
    base_url = forms.URLField(max_length=500, assume_scheme="https")
    clear_api_key = forms.BooleanField(required=False, label="Remove the stored API key")

    class Meta:
        model = AIProvider
        fields = ["name", "kind", "base_url", "api_key", "clear_api_key", "is_active", "is_sandbox", "settings"]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("clear_api_key"):
            cleaned["api_key"] = ""
        elif not cleaned.get("api_key") and self.instance.pk:
            cleaned["api_key"] = AIProvider.objects.filter(pk=self.instance.pk).values_list("api_key", flat=True)[0]
        return cleaned


@admin.register(AIProvider)
class AIProviderAdmin(admin.ModelAdmin):
    form = AIProviderForm
    list_display = ["name", "kind", "base_url", "key", "is_active", "is_sandbox", "model_count"]
    list_filter = ["kind", "is_active", "is_sandbox"]
    search_fields = ["name", "base_url"]
    readonly_fields = ["key", "created_at", "updated_at"]
    actions = ["check_connection"]

    @admin.action(description="Check the connection (and credits) of the selected providers")
    def check_connection(self, request, queryset) -> None:
        for provider in queryset:
            try:
                answer = get_adapter(provider).check_connection()
            except (LookupError, NotImplementedError, ProviderError) as exc:
                self.message_user(request, f"{provider.name}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{provider.name}: {answer}", messages.SUCCESS)

    def get_fields(self, request, obj=None):
        return [
            "name",
            "kind",
            "base_url",
            "key",
            "api_key",
            "clear_api_key",
            "is_active",
            "settings",
            "created_at",
            "updated_at",
        ]

    @admin.display(description="API key")
    def key(self, provider: AIProvider) -> str:
        return mask_secret(provider.api_key)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(model_count=Count("models"))

    @admin.display(ordering="model_count", description="models")
    def model_count(self, provider: AIProvider) -> int:
        return provider.model_count


@admin.register(AIModel)
class AIModelAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "provider", "sandbox", "model_type", "api_endpoint", "is_active"]
    list_filter = ["model_type", "is_active", "provider__is_sandbox", "provider"]
    search_fields = ["name", "api_endpoint"]
    list_select_related = ["provider"]
    readonly_fields = ["created_at", "updated_at"]

    @admin.display(boolean=True, description="sandbox", ordering="provider__is_sandbox")
    def sandbox(self, model: AIModel) -> bool:
        return model.provider.is_sandbox
