from django.conf import settings
from django.contrib import admin
from django.core.files.storage import default_storage
from django.http import Http404
from django.urls import include, path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token

from apps.ai_providers.api import AIModelDetailView, AIModelListView
from apps.assets.api import AssetDetailView, BoxAssetListView, BoxUploadView
from apps.boxes.api import BoxDetailView, BoxListCreateView
from apps.generations.api import CallbackView, GenerateView

from .health import HealthView

api = [
    path("auth/token/", obtain_auth_token, name="auth-token"),
    path("boxes/", BoxListCreateView.as_view(), name="box-list"),
    path("boxes/<int:pk>/", BoxDetailView.as_view(), name="box-detail"),
    path("boxes/<int:box_id>/assets/", BoxAssetListView.as_view(), name="box-assets"),
    path("boxes/<int:box_id>/upload/", BoxUploadView.as_view(), name="box-upload"),
    path("boxes/<int:box_id>/generate/", GenerateView.as_view(), name="box-generate"),
    path("callbacks/<str:token>/", CallbackView.as_view(), name="provider-callback"),
    path("assets/<int:pk>/", AssetDetailView.as_view(), name="asset-detail"),
    path("ai-models/", AIModelListView.as_view(), name="aimodel-list"),
    path("ai-models/<int:pk>/", AIModelDetailView.as_view(), name="aimodel-detail"),
    path("health/", HealthView.as_view(), name="health"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]


def serve_media(request, path: str):
    """Local-file mode (the embedded default) serves media itself; with S3, clients get presigned URLs."""
    if settings.USE_S3:
        raise Http404
    return serve(request, path, document_root=default_storage.location)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include(api)),
    re_path(r"^media/(?P<path>.*)$", serve_media, name="media"),
]
