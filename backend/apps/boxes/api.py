"""Box endpoints: list / create, and one box's retrieve / update / delete."""

from rest_framework import generics, serializers

from .models import Box
from .selectors import box_list_for_user
from .services import box_create, box_delete, box_update


class BoxSerializer(serializers.ModelSerializer):
    asset_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Box
        fields = ["id", "name", "description", "asset_count", "created_at", "updated_at"]
        read_only_fields = ["id", "asset_count", "created_at", "updated_at"]


class _OwnBoxes:
    serializer_class = BoxSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Box.objects.none()
        return box_list_for_user(user=self.request.user)


class BoxListCreateView(_OwnBoxes, generics.ListCreateAPIView):
    """Your boxes, newest first; create a new one."""

    def perform_create(self, serializer: BoxSerializer) -> None:
        box = box_create(owner=self.request.user, **serializer.validated_data)
        box.asset_count = 0
        serializer.instance = box


class BoxDetailView(_OwnBoxes, generics.RetrieveUpdateDestroyAPIView):
    """One of your boxes. Deleting it deletes its assets and their stored files."""

    def perform_update(self, serializer: BoxSerializer) -> None:
        box = box_update(box=serializer.instance, **serializer.validated_data)
        serializer.instance = box

    def perform_destroy(self, instance: Box) -> None:
        box_delete(box=instance)
