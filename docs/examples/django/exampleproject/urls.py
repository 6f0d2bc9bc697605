"""URLs of the example project: the health check of the scheduler started with the app."""

from django.urls import path
from scheduling.views import healthz

urlpatterns = [path("healthz", healthz)]
