import ipaddress
import re
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import models

from .parameters import validate_parameters_schema, validate_request_schema
from .registry import kind_choices

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")  # "_": compose service names have them


def validate_server_url(value: str) -> None:
    """An http(s) base URL. Unlike Django's URLValidator it takes hosts without a dot: local GPU servers are
    often ``http://comfyui:8188`` in a compose network or a machine's name on a LAN."""
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError when not a number in range
    except ValueError as exc:
        raise ValidationError(f"Not a valid URL: {exc}.") from exc
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ValidationError("Enter an http:// or https:// URL with a host, e.g. http://127.0.0.1:8188.")
    if parts.username or parts.password:
        raise ValidationError("Leave credentials out of the URL: they belong in the API key, which stays secret.")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not all(_HOST_LABEL.match(label) for label in host.rstrip(".").split(".")):
        raise ValidationError(f"'{host}' is not a valid host name.")


class AIProvider(models.Model):
    """A service that generates media: an external API (Kie.ai) or a local server (ComfyUI, A1111, …).

    ``api_key`` is a secret: write-only in the admin, never serialized by the API, never logged.
    """

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=32, choices=kind_choices, help_text="Which adapter speaks to this provider.")
    base_url = models.CharField(max_length=500, validators=[validate_server_url])
    api_key = models.CharField(max_length=500, blank=True)
    is_active = models.BooleanField(default=True)
    is_sandbox = models.BooleanField(
        default=False, help_text="A local emulator for development (setup_sandbox), not a real provider."
    )
    settings = models.JSONField(default=dict, blank=True, help_text="Adapter options as a JSON object.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "AI provider"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not isinstance(self.settings, dict):
            raise ValidationError({"settings": 'Must be a JSON object, e.g. {} or {"timeout": 30}.'})


class AIModel(models.Model):
    """One model of a provider, described as data.

    ``request_schema`` is the provider's request body with ``<<var>>`` placeholders; ``parameters_schema``
    describes and validates the options a user may pass in ``generation_config``.
    """

    class ModelType(models.TextChoices):
        IMAGE = "IMAGE", "Image"
        VIDEO = "VIDEO", "Video"
        TEXT = "TEXT", "Text"

    provider = models.ForeignKey(AIProvider, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=200)
    model_type = models.CharField(max_length=10, choices=ModelType.choices)
    api_endpoint = models.CharField(
        max_length=500, help_text="Path of the submit endpoint, relative to the provider's base URL."
    )
    request_schema = models.JSONField(default=dict)
    parameters_schema = models.JSONField(default=dict, blank=True)
    poll_endpoint = models.CharField(
        max_length=500, blank=True, help_text="Path of the task status endpoint, relative to the provider's base URL."
    )
    response_mapping = models.JSONField(
        default=dict,
        blank=True,
        help_text="Where the provider's answers keep the task id, status, results and errors (README: Adding a model).",
    )
    max_prompt_length = models.PositiveIntegerField(
        null=True, blank=True, help_text="Longest prompt the provider accepts; longer ones are refused at the API."
    )
    resizes_source = models.BooleanField(
        default=False,
        help_text="img2img: the model sets its own output size (an upscaler). Otherwise the output keeps the "
        "source image's size and requested width/height are ignored.",
    )
    timeout_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="How long a generation may run at the provider. Empty: 15 min (image), 60 min (video).",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider__name", "name"]
        verbose_name = "AI model"
        constraints = [models.UniqueConstraint(fields=["provider", "name"], name="aimodel_unique_name_per_provider")]
        indexes = [models.Index(fields=["is_active", "model_type"], name="aimodel_active_type_idx")]

    def __str__(self) -> str:
        return f"{self.provider.name} / {self.name}"

    DEFAULT_TIMEOUT_SECONDS = {ModelType.IMAGE: 15 * 60, ModelType.VIDEO: 60 * 60, ModelType.TEXT: 5 * 60}

    @property
    def effective_timeout_seconds(self) -> int:
        return self.timeout_seconds or self.DEFAULT_TIMEOUT_SECONDS[self.model_type]

    def clean(self) -> None:
        """Everything a model must satisfy before it is saved, from the admin, a command or the API."""
        from .mapping import validate_response_mapping
        from .registry import adapter_class
        from .templating import TemplateError, check_schema_variables

        try:  # each adapter knows the response_mapping it can use
            check_mapping = adapter_class(self.provider.kind).validate_response_mapping
        except (LookupError, AIProvider.DoesNotExist):
            check_mapping = validate_response_mapping

        # Checked here rather than as field validators: those are skipped for "empty" values like [] and {}.
        errors = {}
        for field, validate in (
            ("request_schema", validate_request_schema),
            ("parameters_schema", validate_parameters_schema),
            ("response_mapping", lambda value: check_mapping(value, self.request_schema)),
        ):
            try:
                validate(getattr(self, field))
            except ValidationError as exc:
                errors[field] = exc.messages
        if "request_schema" not in errors and "parameters_schema" not in errors:
            try:
                check_schema_variables(self.request_schema, provided=set(self.parameters_schema))
            except TemplateError as exc:
                errors["request_schema"] = [str(exc)]
        if errors:
            raise ValidationError(errors)
