"""Provides the status page a person reads to see how sync is going."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from .status import node_status, problems


@login_required
def status_page(request):
    return render(
        request,
        "sync/status.html",
        {"status": node_status(), "problems": problems(limit=50)},
    )
