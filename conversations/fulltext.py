"""The full-text index of message texts and conversation titles, kept by the database itself, and the
web-search query syntax both databases are asked in.

SQLite: two FTS5 tables with external content (the text is stored once, in the messages and
conversations tables), kept current by triggers; the porter tokenizer matches words by stem.
SQLite migrations that rebuild a table drop its triggers and may renumber its rowids (which the index
refers to), so after every `migrate` missing triggers are made again and the index rebuilt from the
tables (`fts_sqlite_ensure`). A `VACUUM` may renumber rowids too: rebuild by hand afterwards
(`INSERT INTO <fts table>(<fts table>) VALUES('rebuild')`).

PostgreSQL: a stored generated `tsvector` column on each table with a GIN index, queried through
`django.contrib.postgres.search`.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

# The text search configuration on PostgreSQL (stemming as SQLite's porter tokenizer does).
PG_CONFIG = "english"

# Marks around each match in the snippets the databases make; they are turned into <mark>…</mark> after
# the rest of the text is HTML-escaped. Control characters: no stemmer or tokenizer keeps them.
MARK_START, MARK_END = "\x02", "\x03"

MAX_TERMS = 32

# The most results one search gives. Ranking reads every match it ranks, so when more match, the newest
# MAX_RESULTS messages and the newest MAX_RESULTS titles that match are ranked (see search_for_user).
MAX_RESULTS = 1000

SQLITE_TABLES = {
    # fts table: (content table, content column)
    "conversations_message_fts": ("conversations_message", "content"),
    "conversations_conversation_fts": ("conversations_conversation", "title"),
}


def _sqlite_triggers(fts: str, table: str, column: str) -> dict[str, str]:
    insert = f"INSERT INTO {fts}(rowid, {column}) VALUES (new.rowid, new.{column});"
    delete = f"INSERT INTO {fts}({fts}, rowid, {column}) VALUES ('delete', old.rowid, old.{column});"
    return {
        f"{fts}_ai": f"AFTER INSERT ON {table} BEGIN {insert} END",
        f"{fts}_ad": f"AFTER DELETE ON {table} BEGIN {delete} END",
        f"{fts}_au": f"AFTER UPDATE OF {column} ON {table} BEGIN {delete} {insert} END",
    }


SQLITE_TRIGGERS = {
    name: body
    for fts, (table, column) in SQLITE_TABLES.items()
    for name, body in _sqlite_triggers(fts, table, column).items()
}

POSTGRES_DDL = [
    f"""ALTER TABLE conversations_message ADD COLUMN search_vector tsvector
        GENERATED ALWAYS AS (to_tsvector('{PG_CONFIG}', content)) STORED""",
    "CREATE INDEX message_search_idx ON conversations_message USING GIN (search_vector)",
    f"""ALTER TABLE conversations_conversation ADD COLUMN search_vector tsvector
        GENERATED ALWAYS AS (to_tsvector('{PG_CONFIG}', title)) STORED""",
    "CREATE INDEX conversation_search_idx ON conversations_conversation USING GIN (search_vector)",
]
POSTGRES_DDL_DROP = [
    "ALTER TABLE conversations_conversation DROP COLUMN search_vector",
    "ALTER TABLE conversations_message DROP COLUMN search_vector",
]


def fts_sqlite_ensure(connection: Any) -> None:
    """Make the FTS5 tables and their triggers where missing (SQLite only). When a trigger was missing the
    content table was made or rebuilt meanwhile, so the index is rebuilt from it."""
    if connection.vendor != "sqlite":
        return
    tables = set(connection.introspection.table_names())
    if not {"conversations_message", "conversations_conversation"} <= tables:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        triggers = {row[0] for row in cursor.fetchall()}
        for fts, (table, column) in SQLITE_TABLES.items():
            cursor.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5({column}, content='{table}', "
                "content_rowid='rowid', tokenize='porter unicode61 remove_diacritics 2')"
            )
            wanted = _sqlite_triggers(fts, table, column)
            if set(wanted) <= triggers:
                continue
            for name, body in wanted.items():
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
                cursor.execute(f"CREATE TRIGGER {name} {body}")
            cursor.execute(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')")


def fts_sqlite_drop(connection: Any) -> None:
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        for name in SQLITE_TRIGGERS:
            cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
        for fts in SQLITE_TABLES:
            cursor.execute(f"DROP TABLE IF EXISTS {fts}")


# --- the query ------------------------------------------------------------------------------------

_TOKEN = re.compile(r'(-?)"([^"]*)"?|(\S+)')
_WORD = re.compile(r"\w+")


@dataclass
class WebQuery:
    """A web-search query (words, "phrases", -excluded, or) as groups joined by OR; each group's
    terms must all be there and its excluded ones must not. Terms are lists of words (a phrase)."""

    groups: list[tuple[list[list[str]], list[list[str]]]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Nothing to look for: no group has a term that must be there (only operators, only exclusions)."""
        return not any(positive for positive, _ in self.groups)

    def fts5(self) -> str:
        """The query in FTS5's syntax: every term a quoted string, so that nothing a user types is an operator."""

        def phrase(words: list[str]) -> str:
            return '"' + " ".join(words) + '"'

        alternatives = []
        for positive, negative in self.groups:
            if not positive:
                continue
            expression = " AND ".join(phrase(words) for words in positive)
            if negative:
                expression = f"({expression}) NOT ({' OR '.join(phrase(words) for words in negative)})"
            alternatives.append(f"({expression})")
        return " OR ".join(alternatives)


def web_query_parse(text: str) -> WebQuery:
    """Read a query as PostgreSQL's websearch_to_tsquery does: `or` between terms makes alternatives,
    `-` excludes, an unterminated quote ends at the end. Only word characters count inside terms."""
    query = WebQuery()
    positive: list[list[str]] = []
    negative: list[list[str]] = []
    terms = 0
    for match in _TOKEN.finditer(text):
        minus, quoted, bare = match.group(1), match.group(2), match.group(3)
        if bare is not None and bare.lower() == "or":
            if positive or negative:
                query.groups.append((positive, negative))
            positive, negative = [], []
            continue
        if bare is not None and bare.startswith("-"):
            minus, bare = "-", bare[1:]
        words = _WORD.findall(quoted if quoted is not None else bare or "")
        if not words:
            continue
        terms += 1
        if terms > MAX_TERMS:
            break
        (negative if minus else positive).append(words)
    if positive or negative:
        query.groups.append((positive, negative))
    return query


def snippet_html(raw: str) -> str:
    """A snippet the database marked with MARK_START/MARK_END as HTML: escaped, each match in <mark>…</mark>
    (balanced even if the stored text itself held a marker character)."""
    out: list[str] = []
    open_ = False
    for piece in _MARKS.split(raw):
        if piece == MARK_START:
            if not open_:
                out.append("<mark>")
            open_ = True
        elif piece == MARK_END:
            if open_:
                out.append("</mark>")
            open_ = False
        else:
            out.append(html.escape(piece, quote=False))
    if open_:
        out.append("</mark>")
    return "".join(out)


_MARKS = re.compile(f"([{MARK_START}{MARK_END}])")
