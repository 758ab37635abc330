"""Fill this node with a realistic field day of survey data."""

import time

from django.core.management.base import BaseCommand

from study.fieldday import enter_field_day


class Command(BaseCommand):
    help = "Enter a realistic field day of households, consents, visits and forms."

    def add_arguments(self, parser):
        parser.add_argument("--households", type=int, default=30)
        parser.add_argument("--seed", type=int, default=None, help="repeatable data")

    def handle(self, households, seed, **options):
        started = time.monotonic()
        day = enter_field_day(households, seed=seed)
        self.stdout.write(f"entered {day} in {time.monotonic() - started:.1f} s")
