"""What never leaves a process in clear: credentials in URLs and settings, sensitive headers and job data.

One masker for each kind of secret, used by every output channel (logs, the CLI, the admin, exceptions,
Sentry, reprs). Values layer: no I/O, imports nothing of bgjob's.

- `mask_url`: a NATS URL (or a comma-separated list) with its user info replaced, built on `urllib.parse`.
- `is_sensitive_name`: whether a header, setting or option name looks like it holds a secret (Django's
  `SafeExceptionReporterFilter` rule: names containing API, AUTH, TOKEN, KEY, SECRET, PASS, SIGNATURE, COOKIE,
  CREDENTIAL, SEED or SESSION), plus any extra names or glob patterns given.
- `mask_headers`, `mask_arg`, `scrub_text`: a job's headers, its arg (by key name, at any depth) and a text
  quoting its sensitive values, with each secret replaced by `MASK`.
"""

from __future__ import annotations

import fnmatch
import json
import re
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

#: what a masked value shows, as Django's debug page does.
MASK = "********"

_SENSITIVE = re.compile(r"API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|COOKIE|CREDENTIAL|SEED|SESSION", re.IGNORECASE)
#: headers whose names match the rule but carry no secret: tracing context bgjob and Sentry rely on.
_NOT_SECRET_HEADERS = frozenset({"sentry-trace", "baggage", "traceparent", "tracestate", "idempotency-key"})


def mask_url(url: str) -> str:
    """`url` (one NATS URL or several, comma-separated) with any user info (user, password, token) replaced by
    `***`, e.g. `nats://app:p@ss/w@host:4222` -> `nats://***@host:4222`. The user info ends at the *last* `@`
    before the host (a password may hold `@` or `/`). Never raises; a part that does not parse is masked whole
    when it holds an `@`."""
    if not isinstance(url, str):
        return repr(type(url))
    # Servers are split where a new `scheme://` starts, so a ',' inside a password stays inside its URL.
    parts = _NEXT_URL.split(url) if "://" in url else url.split(",")
    return ",".join(_mask_one(part) for part in parts)


_NEXT_URL = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def _mask_one(part: str) -> str:
    text = part.strip()
    try:
        split = urllib.parse.urlsplit(text if "://" in text else f"//{text}")
    except ValueError:  # e.g. an unbalanced '[' in the host
        split = None
    if split is not None and "@" in split.netloc and "@" not in split.path + split.query + split.fragment:
        return urllib.parse.urlunsplit(split._replace(netloc="***@" + split.netloc.rpartition("@")[2])).removeprefix(
            "" if "://" in text else "//"
        )
    if "@" not in text:
        return text
    # A user info that urllib cannot delimit ('/', '?' or '#' in a password): everything up to the last '@'.
    scheme, sep, rest = text.partition("://") if "://" in text else ("", "", text)
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


def is_sensitive_name(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether a header, setting or option named `name` holds a secret: the built-in rule (see the module
    docstring) or one of `extra` (exact names or `fnmatch` globs, case-insensitive)."""
    lowered = name.lower()
    if any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in extra):
        return True
    return lowered not in _NOT_SECRET_HEADERS and _SENSITIVE.search(name) is not None


def mask_headers(headers: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """A copy of `headers` with the values of sensitive ones (`is_sensitive_name`) replaced by `MASK`."""
    extra = tuple(extra)
    return {k: (MASK if is_sensitive_name(k, extra) else v) for k, v in headers.items()}


def mask_arg(arg: Any, keys: Collection[str]) -> Any:
    """A copy of a JSON arg with the value of every dict key named in `keys` (at any depth, exact names) replaced
    by `MASK`; bytes and other args are returned as they are. `keys` empty returns `arg` itself."""
    if not keys:
        return arg
    if isinstance(arg, Mapping):
        return {k: (MASK if k in keys else mask_arg(v, keys)) for k, v in arg.items()}
    if isinstance(arg, list | tuple):
        return [mask_arg(v, keys) for v in arg]
    return arg


def sensitive_values(arg: Any, keys: Collection[str]) -> list[str]:
    """The texts an error message could quote the values held under `keys` in a JSON arg (at any depth) by:
    strings, numbers by `str`, the keys and values of nested containers, each also in its escaped forms
    (`quoted_forms`), longest first. Values shorter than 4 characters are left out (masking them would mangle
    unrelated text, such as line numbers)."""
    found: list[str] = []

    def collect(value: Any, inside: bool) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                if inside and isinstance(k, str) and len(k) >= 4:
                    found.append(k)  # a dict under a sensitive key: its keys are data too (e.g. token -> state)
                collect(v, inside or k in keys)
        elif isinstance(value, list | tuple):
            for v in value:
                collect(v, inside)
        elif inside and isinstance(value, str | int | float) and not isinstance(value, bool):
            text = value if isinstance(value, str) else str(value)
            if len(text) >= 4:
                found.append(text)

    if keys:
        collect(arg, False)
    return _longest_first(found)


def quoted_forms(text: str) -> set[str]:
    """`text` and the forms an exception message, a traceback, a log line or a frame variable quotes it in: its
    `repr`, `ascii` and JSON escapes (backslashes, quotes, newlines, non-ASCII), each also escaped once more
    (a repr of a dict holding it, a JSON log line of such a repr)."""
    forms = {text}
    for _ in range(2):
        forms |= {escape(form) for form in forms for escape in _ESCAPES}
    return forms


_ESCAPES: tuple[Callable[[str], str], ...] = (
    lambda text: repr(text)[1:-1],
    lambda text: ascii(text)[1:-1],
    # repr picks its quote by what the whole text holds: inside a larger string either quote may be escaped.
    lambda text: repr(text)[1:-1].replace("'", "\\'"),
    lambda text: repr(text)[1:-1].replace('"', '\\"'),
    lambda text: json.dumps(text)[1:-1],
    lambda text: json.dumps(text, ensure_ascii=False)[1:-1],
)


def _longest_first(texts: Iterable[str]) -> list[str]:
    """Every text and its quoted forms, at least 4 characters each, longest first (so a text is masked before a
    shorter one inside it could cut it)."""
    forms = set().union(*(quoted_forms(text) for text in texts))
    return sorted((form for form in forms if len(form) >= 4), key=len, reverse=True)


def scrub_text(text: str | None, values: Iterable[str]) -> str | None:
    """`text` with every occurrence of each of `values` replaced by `MASK` (longest first, as `sensitive_values`
    orders them); None and "" are returned as they are."""
    if not text:
        return text
    for value in values:
        if value:
            text = text.replace(value, MASK)
    return text


def secret_texts(arg: Any, keys: Collection[str], headers: Mapping[str, str] | None = None,
                 extra: Iterable[str] = ()) -> list[str]:  # fmt: skip
    """The texts an error message about a job could quote and must not: its `sensitive_values(arg, keys)`, and
    the values of its `headers` whose names are sensitive (`is_sensitive_name(name, extra)`) with their
    space-separated parts (the token of `Bearer <token>`); at least 4 characters each, longest first."""
    found = set(sensitive_values(arg, keys))
    extra = tuple(extra)
    for name, value in (headers or {}).items():
        if isinstance(value, str) and is_sensitive_name(name, extra):
            found.update(v for v in (value, *value.split()) if len(v) >= 4)
    return _longest_first(found)
