#!/usr/bin/env python
"""Django's command-line utility for chatapi."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatapi.settings")
    from django.conf import settings
    from django.core.management import execute_from_command_line

    from chatapi.env import exit_on_setting_error

    with exit_on_setting_error():
        settings.INSTALLED_APPS  # noqa: B018  (loads the settings: a bad one is one line, not a traceback)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
