"""The test suite's settings: the service's own, plus a middleware that records what middleware sees."""

from chatapi.settings import *  # noqa: F403
from chatapi.settings import MIDDLEWARE

MIDDLEWARE = ["tests.middleware.SeenByMiddleware", *MIDDLEWARE]
