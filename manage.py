#!/usr/bin/env python
"""Run administrative tasks for a collect-offline node."""

import os
import sys
from pathlib import Path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "apps"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from config import gc_tuning
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    gc_tuning.tune()
    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A node's settings that cannot work: the message says what to set,
        # and a traceback would only bury it.
        sys.exit(f"manage.py: this node is not configured: {exc}")
    gc_tuning.before_exit()


if __name__ == "__main__":
    main()
