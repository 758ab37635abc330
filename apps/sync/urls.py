"""URLs of the sync engine: the API and the status page."""

from django.urls import path

urlpatterns = []
