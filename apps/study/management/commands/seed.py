"""Fill this node with a realistic field day of survey data."""

import time

from django.core.management.base import BaseCommand

from study.fieldday import bulk_field_days, enter_field_day


class Command(BaseCommand):
    help = "Enter a realistic field day of households, consents, visits and forms."

    def add_arguments(self, parser):
        parser.add_argument("--households", type=int, default=30)
        parser.add_argument("--seed", type=int, default=None, help="repeatable data")
        parser.add_argument(
            "--transactions",
            type=int,
            default=0,
            help="instead, enter about this many transactions in bulk (benchmarks)",
        )

    def handle(self, households, seed, transactions, **options):
        started = time.monotonic()
        if transactions:
            made = bulk_field_days(transactions, seed=seed or 0)
            what = f"{made} transactions in bulk"
        else:
            what = str(enter_field_day(households, seed=seed))
        self.stdout.write(f"entered {what} in {time.monotonic() - started:.1f} s")
