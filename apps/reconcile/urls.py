"""URLs of specimen reconciliation."""

from django.urls import path

from . import views

app_name = "reconcile"
urlpatterns = [
    path("", views.reconcile_page, name="reconcile"),
    path("<str:identifier>/", views.reconciliation_page, name="reconciliation"),
]
