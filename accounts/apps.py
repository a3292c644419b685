"""App config for accounts: users and their API keys."""

import logging

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.redaction import RedactAdminKey

        access_log = logging.getLogger("uvicorn.access")
        if not any(isinstance(f, RedactAdminKey) for f in access_log.filters):
            access_log.addFilter(RedactAdminKey())
