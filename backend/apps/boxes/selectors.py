"""Everything that reads boxes for the API."""

from django.db.models import Count, QuerySet

from .models import Box


def box_list_for_user(*, user) -> QuerySet[Box]:
    """The user's own boxes, newest first, with their asset counts. Other users' boxes do not exist here."""
    return Box.objects.filter(owner=user).annotate(asset_count=Count("assets")).order_by("-created_at", "-id")
