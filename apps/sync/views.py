"""Provides the status page a person reads to see how sync is going."""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db.models import Max
from django.shortcuts import render

from .acknowledgements import reach
from .models import OutgoingTransaction
from .status import node_status, problems


@login_required
def status_page(request):
    me = settings.SYNC_NODE_ID
    last = OutgoingTransaction.objects.filter(producer=me).aggregate(
        last=Max("sequence")
    )["last"]
    return render(
        request,
        "sync/status.html",
        {
            "status": node_status(),
            "problems": problems(limit=50),
            "reach": reach(me, last) if last else [],
        },
    )
