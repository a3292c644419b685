"""A reply's token usage counted against its key: totals, the current minute (tpm) and the budget period,
each window starting again once it has passed; concurrent replies lose nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import limits
from accounts.models import APIKey
from accounts.services import api_key_create, api_key_usage_record

pytestmark = pytest.mark.django_db(transaction=True)


def record(key: APIKey, prompt: int = 6, completion: int = 4) -> APIKey:
    api_key_usage_record(api_key_id=key.pk, prompt_tokens=prompt, completion_tokens=completion)
    key.refresh_from_db()
    return key


def test_usage_adds_up_within_the_minute_and_the_budget_period(user):
    key, _ = api_key_create(user=user, limits={"budget_tokens": 1000, "budget_period": "day"})
    record(key)
    key = record(key, prompt=1, completion=2)

    assert (key.request_count, key.prompt_tokens, key.completion_tokens, key.total_tokens) == (2, 7, 6, 13)
    now = timezone.now()
    assert (key.tpm_used, key.tpm_window) == (13, limits.minute_start(now))
    assert (key.budget_used, key.budget_window) == (13, limits.period_start("day", now))


def test_a_reply_in_the_current_windows_is_counted_in_one_statement(user):
    key, _ = api_key_create(user=user, limits={"budget_tokens": 1000, "budget_period": "month"})
    record(key)  # the first reads the key's windows
    with CaptureQueriesContext(connection) as queries:
        api_key_usage_record(api_key_id=key.pk, prompt_tokens=1, completion_tokens=2)
    key.refresh_from_db()

    # A turn of the minute between the two makes it the careful way again: a locked read, then the UPDATE.
    assert len(queries) == 1 or key.tpm_used == 3, [query["sql"] for query in queries]
    assert (key.request_count, key.total_tokens, key.budget_used) == (2, 13, 13)


def test_a_window_that_has_passed_starts_again_from_this_reply(user):
    key, _ = api_key_create(user=user, limits={"budget_tokens": 1000, "budget_period": "week"})
    record(key)
    now = timezone.now()
    APIKey.objects.filter(pk=key.pk).update(
        tpm_window=limits.minute_start(now) - timedelta(minutes=1),
        budget_window=limits.period_start("week", now) - timedelta(days=7),
    )

    key = record(key, prompt=2, completion=3)

    assert key.total_tokens == 15  # the totals never start again
    assert (key.tpm_used, key.budget_used) == (5, 5)
    assert key.budget_window == limits.period_start("week", now)


def test_a_key_moved_to_another_budget_period_counts_in_that_period(user):
    key, _ = api_key_create(user=user, limits={"budget_tokens": 1000, "budget_period": "total"})
    record(key)
    APIKey.objects.filter(pk=key.pk).update(budget_period="month")

    key = record(key)

    assert key.budget_used == 10
    assert key.budget_window == limits.period_start("month", timezone.now())


def test_concurrent_replies_lose_no_usage(user):
    key, _ = api_key_create(user=user)

    def count(_: int) -> None:
        try:
            for _ in range(5):
                api_key_usage_record(api_key_id=key.pk, prompt_tokens=6, completion_tokens=4)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(count, range(6)))

    key.refresh_from_db()
    assert (key.request_count, key.total_tokens, key.tpm_used) == (30, 300, 300) or (
        # the minute turned during the test: what came after it starts the window again
        key.request_count == 30 and key.total_tokens == 300 and key.tpm_used < 300
    )


def test_a_deleted_key_counts_nothing_and_raises_nothing(user):
    key, _ = api_key_create(user=user)
    APIKey.objects.filter(pk=key.pk).delete()
    api_key_usage_record(api_key_id=key.pk, prompt_tokens=1, completion_tokens=1)
    assert not APIKey.objects.filter(pk=key.pk).exists()
