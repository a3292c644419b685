"""Django settings for chatapi, read from the environment (see README and .env.example)."""

from __future__ import annotations

import sys
from pathlib import Path

import dj_database_url

from chatapi.env import (
    SettingError,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_json_object,
    env_list,
    env_sizes,
    env_str,
    load_dotenv,
)

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env")

DEBUG = env_bool("DEBUG", True)

_DEV_SECRET_KEY = "django-insecure-chatapi-local-development-only"
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise SettingError("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = _DEV_SECRET_KEY
elif not DEBUG and (SECRET_KEY == _DEV_SECRET_KEY or SECRET_KEY.startswith("django-insecure") or len(SECRET_KEY) < 32):
    raise SettingError("SECRET_KEY is not a real secret: use at least 32 random characters.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "servestatic",  # its configuration checks (the middleware serves the static files)
    "drf_spectacular_sidecar",  # Swagger UI's and ReDoc's assets, served by the service itself
    "accounts",
    "conversations",
]

MIDDLEWARE = [
    "chatapi.middleware.RequestGuardMiddleware",
    # Django's own middleware, in Django's order, as subclasses that change only where their hooks run
    # (chatapi/middleware.py): those that set headers on the event loop, those of a browser's login (session,
    # CSRF, authentication, messages) skipped by a request with an API key. Under ASGI, MiddlewareMixin would
    # run each hook in a thread: 13 hand-offs a request.
    "chatapi.middleware.SecurityMiddleware",
    # Static files (the admin's, the API docs'), async-capable like every middleware here, so that none makes
    # the whole chain synchronous.
    "chatapi.middleware.StaticFilesMiddleware",
    "chatapi.middleware.SessionMiddleware",
    "chatapi.middleware.CommonMiddleware",
    "chatapi.middleware.CsrfViewMiddleware",
    "chatapi.middleware.AuthenticationMiddleware",
    "chatapi.middleware.MessageMiddleware",
    "chatapi.middleware.XFrameOptionsMiddleware",
    # After DRF has authenticated a request with a limited key: its x-ratelimit-* headers, on every answer.
    "chatapi.middleware.LimitHeadersMiddleware",
]

ROOT_URLCONF = "chatapi.urls"
APPEND_SLASH = False  # every API route accepts both forms itself; a redirect would drop POST bodies

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "chatapi" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "chatapi.asgi.application"
WSGI_APPLICATION = "chatapi.wsgi.application"

try:
    _database = dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # No persistent connections: under ASGI each request has a thread of its own, and a connection kept
        # by a thread that is gone is never reused (Django's advice; PostgreSQL gets psycopg's pool instead).
        conn_max_age=0,
        conn_health_checks=True,
    )
except ValueError as exc:  # an unknown scheme, a port that is not a number, …
    raise SettingError(f"DATABASE_URL is not a database URL this service can use: {exc}") from None
DATABASES = {"default": _database}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # WAL lets readers run beside the one writer; a busy timeout waits instead of failing.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "timeout": 20,
            # Take the write lock when a transaction starts, so that concurrent writers wait their turn
            # (busy timeout) instead of failing with "database is locked" halfway through.
            "transaction_mode": "IMMEDIATE",
        }
    )
    # A local file cannot drop a connection the way a network server can: no check per request.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
    # DRF imports django.contrib.postgres's model fields whenever psycopg is installed, to map them to its
    # own; that loads psycopg and libpq (some 24 MB per process). chatapi uses none of those fields, and
    # on SQLite nothing else needs psycopg: its import is declined here (DRF takes the ImportError as
    # "not installed").
    sys.modules.setdefault("django.contrib.postgres.fields", None)  # type: ignore[arg-type]
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # psycopg's connection pool: a request (or a reply being stored) borrows a connection and gives it
    # back at once, so a worker needs a few connections, not one per thread that ever touched the database.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("CHATAPI_DB_POOL_MIN", 2, minimum=0),
        "max_size": env_int("CHATAPI_DB_POOL_MAX", 20, minimum=1),
        "timeout": 10,
    }

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# What replies make (images, speech) is kept through Django's storage API: files under MEDIA_ROOT by
# default, or any storage backend (django-storages' S3, GCS, Azure, …) named by CHATAPI_MEDIA_STORAGE, with
# the backend's options as a JSON object in CHATAPI_MEDIA_STORAGE_OPTIONS. Files are served only through
# GET /attachments/{id}, to their owner: MEDIA_URL is not served.
MEDIA_ROOT = Path(env_str("CHATAPI_MEDIA_ROOT") or BASE_DIR / "media")
STORAGES = {
    "default": {
        "BACKEND": env_str("CHATAPI_MEDIA_STORAGE") or "django.core.files.storage.FileSystemStorage",
        "OPTIONS": env_json_object("CHATAPI_MEDIA_STORAGE_OPTIONS"),
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
SERVESTATIC_USE_FINDERS = DEBUG

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Requests larger than this are refused with 413 before they are parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("CHATAPI_MAX_BODY_BYTES", 1_048_576, minimum=1024)
# An import (POST /conversations/import, import_conversations): at most this many bytes, uncompressed (a zip's
# conversations.json is counted as it comes out, so a zip bomb is refused). Its body is not held in memory: past
# FILE_UPLOAD_MAX_MEMORY_SIZE (Django's 2.5 MB) it is in a temporary file, and it is read incrementally.
CHATAPI_IMPORT_MAX_BYTES = env_int("CHATAPI_IMPORT_MAX_BYTES", 1 << 30, minimum=1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.APIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "chatapi.parsers.StrictFormParser",
        "chatapi.parsers.StrictMultiPartParser",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "EXCEPTION_HANDLER": "chatapi.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "chatapi",
    "DESCRIPTION": (
        "Persistent, threaded conversations with a language model. Authenticate with `Authorization: Bearer <api key>`."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "PREPROCESSING_HOOKS": ["chatapi.urls.schema_without_slash_duplicates"],
    # The docs pages load nothing from elsewhere: they work offline and behind a strict firewall.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "chatapi.schema.add_reply_links"],
}

# --- chatapi's own knobs -------------------------------------------------------------------

OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL")
CHATAPI_BACKEND_CONFIGURED = bool(OPENAI_API_KEY or OPENAI_BASE_URL)
# Without a backend the service runs on the offline `echo` development model.
CHATAPI_MODELS = env_list("CHATAPI_MODELS", ["gpt-4o-mini"] if CHATAPI_BACKEND_CONFIGURED else ["echo"])
if not CHATAPI_MODELS:
    raise SettingError("CHATAPI_MODELS must name at least one model.")
CHATAPI_DEFAULT_MODEL = env_str("CHATAPI_DEFAULT_MODEL") or CHATAPI_MODELS[0]
if CHATAPI_DEFAULT_MODEL not in CHATAPI_MODELS:
    raise SettingError(f"CHATAPI_DEFAULT_MODEL {CHATAPI_DEFAULT_MODEL!r} is not in CHATAPI_MODELS.")
CHATAPI_BACKEND_TIMEOUT = env_float("CHATAPI_BACKEND_TIMEOUT", 60.0)
CHATAPI_BACKEND_MAX_RETRIES = env_int("CHATAPI_BACKEND_MAX_RETRIES", 2, minimum=0)
CHATAPI_AUTOCONTINUE_MAX_ROUNDS = env_int("CHATAPI_AUTOCONTINUE_MAX_ROUNDS", 3, minimum=1)
# Each model's context window in tokens (`*` for any model not named): a reply is asked with the system
# prompt and the newest part of its branch that fits, less the tokens kept for the reply itself.
CHATAPI_MODEL_CONTEXT = env_sizes("CHATAPI_MODEL_CONTEXT", {"*": 8192})
# A reply being generated is kept alive by its worker; past this many seconds without word from it (the
# worker died), a surviving worker, or the next to start, marks it interrupted with the text it had.
CHATAPI_GENERATION_LEASE_SECONDS = env_int("CHATAPI_GENERATION_LEASE_SECONDS", 30, minimum=2)
# A client that goes away does not stop its reply, unless this is true (saves tokens: the old behaviour).
CHATAPI_STOP_ON_DISCONNECT = env_bool("CHATAPI_STOP_ON_DISCONNECT", False)
# A generation's event log (conversations.events) is kept this many seconds after its last event, so that
# a client that lost its stream can still resume it; in Redis, a stream keeps at most about this many events.
CHATAPI_GENERATION_LOG_TTL = env_int("CHATAPI_GENERATION_LOG_TTL", 600, minimum=1)
CHATAPI_GENERATION_LOG_MAXLEN = env_int("CHATAPI_GENERATION_LOG_MAXLEN", 10_000, minimum=1)
# A stream that has sent nothing for this long gets a `: ping` comment, so proxies keep it open.
CHATAPI_SSE_PING_SECONDS = env_float("CHATAPI_SSE_PING_SECONDS", 15.0)
# Limits new API keys get (0: none) unless their user has defaults of their own; each key's own can be changed
# in the admin or with update_api_key. At most what the database column holds (accounts.services.MAX_LIMIT).
_MAX_LIMIT = 2**31 - 1
CHATAPI_DEFAULT_RPM = env_int("CHATAPI_DEFAULT_RPM", 0, minimum=0, maximum=_MAX_LIMIT)
CHATAPI_DEFAULT_TPM = env_int("CHATAPI_DEFAULT_TPM", 0, minimum=0, maximum=_MAX_LIMIT)
CHATAPI_DEFAULT_MAX_PARALLEL = env_int("CHATAPI_DEFAULT_MAX_PARALLEL", 0, minimum=0, maximum=_MAX_LIMIT)
CHATAPI_DEFAULT_BUDGET_TOKENS = env_int("CHATAPI_DEFAULT_BUDGET_TOKENS", 0, minimum=0, maximum=_MAX_LIMIT)
CHATAPI_DEFAULT_BUDGET_PERIOD = env_choice("CHATAPI_DEFAULT_BUDGET_PERIOD", "month", ["day", "week", "month", "total"])
# A key's `last_used_at` is written at most this often (seconds), not on every request.
CHATAPI_KEY_LAST_USED_INTERVAL = env_int("CHATAPI_KEY_LAST_USED_INTERVAL", 60, minimum=0)
# The operator endpoints (`/admin/users…`, for the older proxy's admin scripts) accept this key, or a staff
# user's API key. Unset, they answer 404 to anyone without a staff key, so they do not advertise themselves.
CHATAPI_ADMIN_KEY = env_str("CHATAPI_ADMIN_KEY")
if CHATAPI_ADMIN_KEY and not DEBUG and len(CHATAPI_ADMIN_KEY) < 16:
    raise SettingError("CHATAPI_ADMIN_KEY is too easy to guess: use at least 16 random characters.")
# Failed admin_key attempts a client address may make a minute (across workers with REDIS_URL) before the
# operator endpoints answer it 429 without looking at the key.
CHATAPI_ADMIN_MAX_FAILURES = env_int("CHATAPI_ADMIN_MAX_FAILURES", 10, minimum=1)


# Images and speech by intent: with an image model and/or a speech model, /api/complete (and the conversation
# API with CHATAPI_TOOLS_ON_CONVERSATIONS) offers the chat model the tools generate_image and text_to_speech.
CHATAPI_IMAGE_MODEL = env_str("CHATAPI_IMAGE_MODEL")
CHATAPI_IMAGE_SIZE = env_str("CHATAPI_IMAGE_SIZE")  # empty: the image model's default
CHATAPI_TTS_MODEL = env_str("CHATAPI_TTS_MODEL")
CHATAPI_TTS_VOICE = env_str("CHATAPI_TTS_VOICE") or "alloy"
# Text to speak longer than this is cut at a sentence boundary (OpenAI's speech models take 4,096 characters).
CHATAPI_TTS_MAX_CHARS = env_int("CHATAPI_TTS_MAX_CHARS", 4096, minimum=100)
CHATAPI_TOOLS_ON_CONVERSATIONS = env_bool("CHATAPI_TOOLS_ON_CONVERSATIONS", False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("CHATAPI_LOG_LEVEL", "INFO").upper()},
    # One line per backend request is noise at INFO; failures are logged by chatapi itself.
    "loggers": {name: {"level": "WARNING"} for name in ("httpx", "httpx2", "openai")},
}

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("CHATAPI_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
