"""Asset endpoints: a box's asset list, upload into a box, and one asset's detail / delete."""

import django_filters
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.boxes.selectors import box_list_for_user

from .models import Asset
from .selectors import asset_list_for_box, asset_list_for_user
from .services import asset_create_upload, asset_delete
from .storage import file_url


class AssetSerializer(serializers.ModelSerializer):
    file_url = serializers.SerializerMethodField(help_text="Where to download the file; null until there is one.")

    class Meta:
        model = Asset
        fields = [
            "id",
            "box",
            "asset_type",
            "source",
            "status",
            "prompt_text",
            "ai_model",
            "parent_asset",
            "generation_config",
            "external_task_id",
            "progress",
            "file_url",
            "mime_type",
            "file_size",
            "width",
            "height",
            "sha256",
            "error_message",
            "last_error",
            "metadata",
            "created_at",
            "started_at",
            "submitted_at",
            "provider_finished_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_file_url(self, asset: Asset) -> str | None:
        return file_url(asset.file.name, request=self.context.get("request"))


class UploadSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text="PNG, JPEG, WEBP image or MP4, WebM, MOV video. The type is read from the content."
    )
    prompt_text = serializers.CharField(required=False, allow_blank=True, default="", max_length=10000)


class AssetFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Asset.Status.choices)
    asset_type = django_filters.ChoiceFilter(choices=Asset.AssetType.choices)
    source = django_filters.ChoiceFilter(choices=Asset.Source.choices)

    class Meta:
        model = Asset
        fields = ["status", "asset_type", "source"]


def _own_box(request, box_id: int):
    return get_object_or_404(box_list_for_user(user=request.user), pk=box_id)


class BoxAssetListView(generics.ListAPIView):
    """The assets of one of your boxes, newest first."""

    serializer_class = AssetSerializer
    filterset_class = AssetFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Asset.objects.none()
        return asset_list_for_box(box=_own_box(self.request, self.kwargs["box_id"]))


class BoxUploadView(APIView):
    """Upload an image or video into one of your boxes."""

    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(request=UploadSerializer, responses={201: AssetSerializer})
    def post(self, request, box_id: int):
        box = _own_box(request, box_id)  # 404 before the body is read
        serializer = UploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        asset = asset_create_upload(
            box=box,
            uploaded_file=serializer.validated_data["file"],
            prompt_text=serializer.validated_data["prompt_text"],
        )
        return Response(AssetSerializer(asset, context={"request": request}).data, status=status.HTTP_201_CREATED)


class AssetDetailView(generics.RetrieveDestroyAPIView):
    """One of your assets. Deleting it removes its stored file too."""

    serializer_class = AssetSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Asset.objects.none()
        return asset_list_for_user(user=self.request.user)

    def perform_destroy(self, instance: Asset) -> None:
        asset_delete(asset=instance)
