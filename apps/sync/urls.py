"""URLs of the sync engine: the API, its schema and the status page."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from . import views
from .transport import api

app_name = "sync"
urlpatterns = [
    path("api/sync/v1/push/", api.PushView.as_view(), name="push"),
    path("api/sync/v1/held/", api.HeldView.as_view(), name="held"),
    path("api/sync/v1/pull/", api.PullView.as_view(), name="pull"),
    path("api/sync/v1/identity/", api.IdentityView.as_view(), name="identity"),
    path("api/sync/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("sync/", views.status_page, name="status"),
]
