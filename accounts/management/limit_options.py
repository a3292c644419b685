"""The limit flags `create_api_key` and `update_api_key` share: `--rpm --tpm --max-parallel --budget-tokens
--budget-period` (0 removes a limit)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import CommandParser

from accounts.models import BudgetPeriod
from accounts.services import MAX_LIMIT, Limits

_NUMBERS = {
    "rpm": "Requests a minute that call the model.",
    "tpm": "Tokens a minute.",
    "max_parallel": "Replies in progress at once.",
    "budget_tokens": "Tokens per budget period.",
}


def limit_number(raw: str) -> int:
    """A limit as a flag gives it: a whole number from 0 to MAX_LIMIT, else argparse's one-line error (a bigger
    one would overflow the column)."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if not 0 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{raw} is not between 0 (no limit) and {MAX_LIMIT}")
    return value


def add_limit_arguments(parser: CommandParser, *, defaults: str) -> None:
    for field, help_text in _NUMBERS.items():
        parser.add_argument(
            f"--{field.replace('_', '-')}",
            type=limit_number,
            default=None,
            metavar="N",
            help=f"{help_text} 0: none. {defaults}",
        )
    parser.add_argument("--budget-period", choices=BudgetPeriod.values, default=None, help="The budget's period.")


def limits_from_options(options: dict[str, Any]) -> Limits:
    """The limits given on the command line (those left out are not in it)."""
    return {field: options[field] for field in (*_NUMBERS, "budget_period") if options.get(field) is not None}


def describe_limits(api_key: Any) -> str:
    parts = [f"{field}={getattr(api_key, field)}" for field in _NUMBERS if getattr(api_key, field)]
    if api_key.budget_tokens:
        parts.append(f"budget_period={api_key.budget_period}")
    return ", ".join(parts) or "no limits"
