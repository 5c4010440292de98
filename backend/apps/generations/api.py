"""Starting generations (``POST /api/boxes/<id>/generate/``) and receiving providers' callbacks."""

import logging

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.ai_providers.contract import CallbackRejected
from apps.ai_providers.models import AIModel
from apps.ai_providers.selectors import ai_model_list_active
from apps.assets.api import AssetSerializer
from apps.assets.models import Asset
from apps.assets.selectors import asset_list_for_user
from apps.boxes.selectors import box_list_for_user
from config.api import error_body

from .lifecycle import CallbackIgnored, handle_callback
from .start import MAX_VARIANTS, generation_start

logger = logging.getLogger(__name__)


class GenerateSerializer(serializers.Serializer):
    prompt = serializers.CharField(max_length=20000, trim_whitespace=True)
    ai_model_id = serializers.IntegerField()
    parent_asset_id = serializers.IntegerField(required=False, allow_null=True)
    mask_asset_id = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="Inpainting: an image of the source's size, white where the model may paint.",
    )
    generation_config = serializers.JSONField(
        required=False, default=dict, help_text="Options of the model, as its parameters_schema describes."
    )
    variants = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_VARIANTS,
        help_text="Generate N variants with distinct seeds; the answer is then {variant_group, assets}.",
    )

    def validate_ai_model_id(self, value: int) -> AIModel:
        model = ai_model_list_active().filter(pk=value).first()
        if model is None:
            raise serializers.ValidationError(f"No active AI model with id {value}; GET /api/ai-models/ lists them.")
        return model

    def validate_parent_asset_id(self, value: int | None) -> Asset | None:
        return self._own_asset(value)

    def validate_mask_asset_id(self, value: int | None) -> Asset | None:
        return self._own_asset(value)

    def _own_asset(self, value: int | None) -> Asset | None:
        if value is None:
            return None
        asset = asset_list_for_user(user=self.context["request"].user).filter(pk=value).first()
        if asset is None:
            raise serializers.ValidationError(f"No asset with id {value} in your boxes.")
        return asset


class VariantsSerializer(serializers.Serializer):
    variant_group = serializers.CharField(allow_null=True, help_text="Null for a single variant.")
    assets = AssetSerializer(many=True)


class GenerateView(APIView):
    """Start a generation in one of your boxes: 201 with the asset in PENDING; follow it at /api/assets/{id}/.

    With ``variants`` the answer is ``{"variant_group", "assets": [...]}``, one asset per variant.
    """

    @extend_schema(
        request=GenerateSerializer,
        responses={201: PolymorphicProxySerializer("Generated", [AssetSerializer, VariantsSerializer], None)},
    )
    def post(self, request, box_id: int):
        box = get_object_or_404(box_list_for_user(user=request.user), pk=box_id)
        serializer = GenerateSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        with transaction.atomic():
            assets = generation_start(
                box=box,
                model=data["ai_model_id"],
                prompt=data["prompt"],
                parent=data.get("parent_asset_id"),
                mask=data.get("mask_asset_id"),
                config=data["generation_config"],
                variants=data.get("variants", 1),
            )
        context = {"request": request}
        if "variants" not in data:
            return Response(AssetSerializer(assets[0], context=context).data, status=status.HTTP_201_CREATED)
        body = {
            "variant_group": assets[0].metadata.get("variant_group"),
            "assets": AssetSerializer(assets, many=True, context=context).data,
        }
        return Response(body, status=status.HTTP_201_CREATED)


class CallbackView(APIView):
    """Where providers report that a task ended. The token in the URL is the asset's own, unguessable."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=None,
        responses={200: None, 400: None, 404: None},
        description="For providers, not clients: the provider's own payload; answered 200 once read.",
    )
    def post(self, request, token: str):
        headers = {key: value for key, value in request.headers.items()}
        try:
            handle_callback(token, headers=headers, body=request.body)
        except Asset.DoesNotExist:
            return Response(error_body(code="not_found", message="Unknown callback."), status=status.HTTP_404_NOT_FOUND)
        except CallbackRejected as exc:
            logger.warning("callback %s… rejected: %s", token[:6], exc)
            return Response(error_body(code="rejected", message=f"Callback rejected: {exc}"), status=400)
        except CallbackIgnored as exc:
            logger.info("callback %s… ignored: %s", token[:6], exc)
            return Response({"status": "ignored"})
        return Response({"status": "accepted"})
