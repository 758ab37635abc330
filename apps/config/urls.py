"""URLs of a node; its role decides which are on."""

from django.conf import settings
from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path


def health(request):
    return JsonResponse(
        {"status": "ok", "role": settings.ROLE, "node": settings.NODE_ID}
    )


urlpatterns = [
    path("health/", health, name="health"),
    path("admin/", admin.site.urls),
    path("reconcile/", include("reconcile.urls")),
    path("", include("sync.urls")),
]
