"""Provides the reconciliation page: scan the specimens in hand, see the outcome."""

from django.contrib import admin, messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from . import matching
from .forms import ReconcileForm
from .models import Reconciliation

RECENT = 50


@login_required
def reconcile_page(request):
    """Show the form and past reconciliations; check, and save on request."""
    laptops = matching.field_laptops()
    result = None
    if request.method == "POST":
        form = ReconcileForm(request.POST, laptops=laptops)
        if form.is_valid():
            data = form.cleaned_data
            result = matching.check(
                data["producer"], data["shift_date"], data["scans"].splitlines()
            )
            if "save" in request.POST:
                reconciliation = matching.save_reconciliation(
                    username=request.user.get_username(),
                    producer=data["producer"],
                    shift_date=data["shift_date"],
                    result=result,
                    notes=data["notes"],
                    started=data["started"],
                )
                messages.success(
                    request,
                    f"Saved as {reconciliation}. It goes upstream with the next sync.",
                )
                if result.duplicates:
                    messages.info(
                        request,
                        "Scanned more than once, counted once: "
                        + ", ".join(result.duplicates),
                    )
                return redirect(reconciliation)
    else:
        form = ReconcileForm(
            laptops=laptops,
            initial={"shift_date": timezone.localdate(), "started": timezone.now()},
        )
    recent = matching.with_counts(Reconciliation.objects.all())[:RECENT]
    return render(
        request,
        "reconcile/reconcile.html",
        {
            **admin.site.each_context(request),
            "title": "Reconcile specimens",
            "form": form,
            "laptops": laptops,
            "result": result,
            "recent": recent,
        },
    )


@login_required
def reconciliation_page(request, identifier: str):
    """Show a saved reconciliation with every specimen's outcome."""
    reconciliation = get_object_or_404(
        Reconciliation, reconciliation_identifier=identifier
    )
    lines = reconciliation.lines.select_related("requisition__visit__consent")
    return render(
        request,
        "reconcile/reconciliation.html",
        {
            **admin.site.each_context(request),
            "title": f"Reconciliation {reconciliation}",
            "reconciliation": reconciliation,
            "result": matching.Result.from_lines(lines),
        },
    )
