"""Database URLs (`ledger_url`) as messages and `config show` print them, and the ones tierflow cannot use.

Plain string work, no SQLAlchemy: `config show` and config loading use it without importing a database library.
"""

from __future__ import annotations

import re

_SCHEME = re.compile(r"([\w+]+)://")
"""A URL's `dialect+driver://`, by the pattern SQLAlchemy parses it with."""
_QUERY_PASSWORD = re.compile(r"(?i)((?:^|[?&\s])password\s*=\s*)[^&\s]*")
"""A `password=` query parameter (libpq reads one), or keyword of a `key=value` connection string."""

PERCENT_ENCODE = "special characters in a password must be percent-encoded (@ as %40, % as %25)"

URL_FORMS = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"


def _user_info(rest: str) -> tuple[str, int] | None:
    """The user name of `rest` (a URL after `://`) and where its user info ends (its last `@`), when a password
    follows the name; None when there is none.

    Read as SQLAlchemy reads it (the name runs to the first `:`), except that the password runs to the last `@`
    before the query, not the first: an `@` written in a password unencoded is then part of what is hidden.
    """
    user = re.match(r"[^:/@]*", rest).group()  # type: ignore[union-attr]  # matches the empty string at least
    if not rest.startswith(":", len(user)):
        return None
    first = rest.find("@", len(user))
    if first < 0:
        return None  # `host:port/...`: no user info
    query = rest.find("?", first)
    return user, rest.rfind("@", 0, query if query >= 0 else len(rest))


def masked_url(url: str) -> str:
    """`url` fit to print: its password, and any `password=` parameter, as `***`; the rest as written.

    A value without a scheme (`user:password@host/db`, a mistake) is masked the same way.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    info = _user_info(rest)
    if info is not None:
        user, end = info
        rest = f"{user}:***{rest[end:]}"
    return _QUERY_PASSWORD.sub(r"\1***", f"{scheme}{sep}{rest}")


def ledger_url_problem(url: str) -> str | None:
    """Why tierflow cannot use `url` as its ledger, with the fix, or None if it may (whether the database is
    there is for a connection to tell). Names the URL masked. tierflow keeps its ledger in SQLite (Python's sqlite3)
    or PostgreSQL (psycopg 3, which tierflow installs): any other driver, whether installed or not, is refused
    here rather than failing later with an import error or an untested dialect."""
    shown = masked_url(url)
    scheme = _SCHEME.match(url)
    if scheme is None:
        return f"{shown} is not a database URL: write it as {URL_FORMS}"
    backend, _, driver = scheme[1].partition("+")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            return f"{shown} names the SQLite driver {driver}, which tierflow does not use: write sqlite:///PATH"
        return None
    if backend in ("postgres", "pgsql", "psql"):
        return (
            f"{shown}: {backend}:// is not a database SQLAlchemy knows: write postgresql+psycopg:// (or "
            "postgresql://), served by the psycopg 3 installed with tierflow"
        )
    if backend != "postgresql":
        return f"{shown}: a ledger is kept in SQLite or PostgreSQL only, not {backend}: write it as {URL_FORMS}"
    if driver not in ("", "psycopg"):
        return (
            f"{shown} names the PostgreSQL driver {driver}, which tierflow does not use: write "
            "postgresql+psycopg:// (or postgresql://), served by the psycopg 3 installed with tierflow"
        )
    info = _user_info(url[scheme.end() :])
    if info is not None and "@" in url[scheme.end() + len(info[0]) : scheme.end() + info[1]]:
        return (
            f"{shown}: its password holds an @, so the URL does not parse as intended (what follows that @ "
            f"would be taken for the host): {PERCENT_ENCODE}"
        )
    return None


def connection_advice(cause: str) -> str:
    """What to check when a PostgreSQL ledger cannot be connected to, fitted to the driver's `cause` when it is one
    tierflow recognises."""
    said = cause.lower()
    if "password authentication failed" in said:
        return f"check the password in ledger_url, PGPASSWORD or ~/.pgpass; in the URL, {PERCENT_ENCODE}"
    if "no password supplied" in said:
        return "the server asks for a password: give the password in ledger_url, PGPASSWORD or ~/.pgpass"
    found = re.search(r'database "([^"]*)" does not exist', cause)
    if found:
        return f"create the database {found[1]} on that server, or correct its name in ledger_url"
    found = re.search(r'role "([^"]*)" does not exist', cause)
    if found:
        return f"create the role {found[1]} on that server, or correct the user name in ledger_url"
    if "connection refused" in said or "no such file or directory" in said:
        return (
            "no PostgreSQL server is running at that host and port (or socket folder): start it, or correct "
            "the host and port (or host=) in ledger_url"
        )
    if "could not translate host name" in said or "name or service not known" in said:
        return "the host name is not known: correct the host in ledger_url"
    if "timeout expired" in said or "timed out" in said:
        return "the server did not answer in time: check the host and port in ledger_url, and any firewall between"
    if "no pg_hba.conf entry" in said:
        return "the server does not accept this user from this machine: its administrator adds a pg_hba.conf entry"
    return "check that its server is up and ledger_url is right"
