"""Study storage URLs: which ones a sweep accepts, and how they are shown.

A storage URL may carry a password, in the user part (``postgresql://USER:PASSWORD@HOST/DB``) or in
the query (``?password=...``, ``?sslpassword=...``). Every message, log line and file that mentions a
storage URL shows it through :func:`redact_url`, and any text that came from the database libraries
(which may quote the URL) through :func:`redact_text`, so no password is ever printed or written.
"""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from betavae.errors import ConfigError

#: The database dialects a sweep can store its study in.
STORAGE_SCHEMES = ("sqlite", "postgresql", "postgres")
#: PostgreSQL driver name in the URL (``postgresql+NAME://``) -> (module to import, what to install).
POSTGRES_DRIVERS = {
    "psycopg": ("psycopg", "pip install 'betavae[postgres]'"),
    "psycopg2": ("psycopg2", "pip install psycopg2-binary"),
    "pg8000": ("pg8000", "pip install pg8000"),
}
MASK = "***"
#: A query key whose value is a secret: password, sslpassword, passfile, passwd, pwd, secret, token, ...
_SECRET_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where ``url`` may hold a secret, as ``(start, end)`` index pairs (sorted, may overlap).

    Conservative: every reading of the URL is covered. In the user part, the password is taken
    from the first ``:`` after the user name to the *last* ``@`` of the URL (SQLAlchemy ends it at
    the first ``@``, a browser at the last one before the path; a password may hold ``@``, ``/``,
    ``?``). In the query, the value of every key that names a secret, up to the next ``&KEY=``.
    """
    spans = []
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    user_end = re.compile(r"[:/]").search(url, start)
    last_at = url.rfind("@")
    if user_end is not None and url[user_end.start()] == ":" and last_at > user_end.start():
        spans.append((user_end.start() + 1, last_at))
    query = url.find("?")
    if query != -1:
        position, secret = query + 1, False
        for part in url[query + 1:].split("&"):
            key, equals, _ = part.partition("=")
            if equals:
                secret = bool(_SECRET_KEY.search(unquote_plus(key)))
                if secret:
                    spans.append((position + len(key) + 1, position + len(part)))
            elif secret:  # no '=': a raw '&' inside the secret value; keep hiding
                spans.append((position - 1, position + len(part)))
            position += len(part) + 1
    return sorted(s for s in spans if s[1] > s[0])


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def redact_url(url: str) -> str:
    """``url`` with every password (user part and query) replaced by ``***``; the rest as given."""
    url = str(url)
    shown, last = [], 0
    for a, b in _merged(_secret_spans(url)):
        shown += [url[last:a], MASK]
        last = b
    shown.append(url[last:])
    return "".join(shown)


def url_secrets(url: str) -> list[str]:
    """The secrets ``url`` may hold, as written, decoded and encoded (longest first), for :func:`redact_text`:
    each masked part, what follows each ``:`` in it (a password after a user name), and its longer pieces."""
    found = set()
    for a, b in _secret_spans(url):
        raw = url[a:b]
        candidates = {raw, *(raw[i + 1:] for i, c in enumerate(raw) if c == ":"),
                      *(piece for piece in re.split(r"[@&:]", raw) if len(piece) >= 4)}
        for c in candidates:
            found.update({c, unquote(c), unquote_plus(c), quote(unquote(c), safe=""), quote_plus(unquote_plus(c))})
    return sorted((s for s in found if s), key=len, reverse=True)


def redact_text(text: str, url: str) -> str:
    """``text`` (an error from a database library, say) with ``url`` shown redacted and its secrets masked."""
    text = str(text).replace(url, redact_url(url))
    for secret in url_secrets(url):
        text = text.replace(secret, MASK)
    return text


def check_storage_url(url: str) -> str:
    """The SQLAlchemy URL Optuna should use for ``url``; a :class:`ConfigError` naming the fix otherwise.

    Accepts ``sqlite:///PATH`` and ``postgresql[+DRIVER]://...`` (``postgres://`` too); picks psycopg,
    else psycopg2, when no driver is named, and refuses a driver that is not installed.
    """
    shown = redact_url(url)
    scheme = url.split(":", 1)[0].lower() if "://" in url else ""
    dialect, _, driver = scheme.partition("+")
    if dialect not in STORAGE_SCHEMES:
        raise ConfigError(f"unsupported study storage '{shown}'; use sqlite:///PATH/study.db or "
                          "postgresql://USER:PASSWORD@HOST:PORT/DATABASE.")
    if dialect == "sqlite":
        if driver not in ("", "pysqlite") or not url.startswith(f"{scheme}:///") or url == f"{scheme}:///":
            raise ConfigError(f"a SQLite storage URL needs a file path, e.g. sqlite:///sweep/study.db; got '{shown}'.")
        return url
    rest = url.split("://", 1)[1]
    if driver and driver not in POSTGRES_DRIVERS:
        raise ConfigError(f"unsupported PostgreSQL driver '{driver}' in the study storage '{shown}'; use one of "
                          f"{', '.join(POSTGRES_DRIVERS)} (postgresql+psycopg://...), or name none: "
                          "postgresql://... uses psycopg.")
    driver = driver or postgres_driver()
    module, install = POSTGRES_DRIVERS[driver]
    error = _import_error(module)
    if error is not None:
        raise ConfigError(f"the study storage asks for the PostgreSQL driver {driver}, which cannot be imported "
                          f"({error}); install it with: {install}.")
    full = f"postgresql+{driver}://{rest}"
    _check_parses(full, shown)
    return full


def _import_error(module: str) -> str | None:
    """Why ``module`` cannot be imported (its error's first line), or None when it can."""
    try:
        __import__(module)
    except ImportError as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


def postgres_driver() -> str:
    """The installed PostgreSQL driver SQLAlchemy should use: psycopg (3), else psycopg2."""
    errors = {}
    for name in ("psycopg", "psycopg2"):
        errors[name] = _import_error(POSTGRES_DRIVERS[name][0])
        if errors[name] is None:
            return name
    raise ConfigError(f"a PostgreSQL storage needs a database driver and none can be imported "
                      f"(psycopg: {errors['psycopg']}); install it with: pip install 'betavae[postgres]'.")


def _check_parses(url: str, shown: str) -> None:
    """Refuse a URL SQLAlchemy cannot read (a port that is not a number, say) before Optuna meets it."""
    try:
        from sqlalchemy.engine import make_url
    except ImportError:  # without SQLAlchemy Optuna is missing too, which the sweep reports itself
        return
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - ArgumentError, ValueError (port): one message for all, never the URL
        raise ConfigError(f"the study storage '{shown}' is not a URL SQLAlchemy can read; write it as "
                          "postgresql://USER:PASSWORD@HOST:PORT/DATABASE (PORT a number; a password with "
                          "'@', ':', '/' or '?' percent-encoded, e.g. %40 for '@').") from None
    if "@" in (parsed.host or "") or "@" in (parsed.username or ""):  # SQLAlchemy's reading differs from the user's
        raise ConfigError(f"the study storage '{shown}' has more than one '@'; percent-encode an '@' inside "
                          "the user name, password or query as %40.")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ConfigError(f"the port of the study storage '{shown}' must be from 1 to 65535, got {parsed.port}.")
