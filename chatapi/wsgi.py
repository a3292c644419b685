"""WSGI entry point, for tools that want one; the service itself is served over ASGI."""

import os

from django.core.wsgi import get_wsgi_application

from chatapi.env import exit_on_setting_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatapi.settings")

with exit_on_setting_error():
    application = get_wsgi_application()
