"""Matching a job's arg against values at dotted JSON paths: how the DLQ is searched for one person's data.

Values layer: no I/O. `validate_match` checks a match (`{"customer.id": 7}`), `parse_match` reads the CLI's
`PATH=VALUE` texts, `arg_matches` tells whether a decoded arg matches.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidMatch

#: the longest match path (characters), and the longest segment of one (a dict key, or a list index in digits).
MAX_PATH_CHARS = 1_000
MAX_SEGMENT_CHARS = 200
#: the longest match value given as text (the CLI's `--match PATH=VALUE`, the admin's form), in characters.
MAX_VALUE_CHARS = 10_000


def validate_match(match: Any) -> dict[tuple[str, ...], Any]:
    """`match` ({"customer.id": 7, ...}: dotted JSON paths to values) as {("customer", "id"): 7, ...}.

    Raises InvalidMatch, before anything is read, when it is not a non-empty mapping, or a path is not a str, is
    empty, has an empty segment ("a..b", ".a"), is longer than MAX_PATH_CHARS or has a segment longer than
    MAX_SEGMENT_CHARS, or has a numeric segment that is not ASCII digits ("items.²": a list index is 0-9 only)."""
    if not isinstance(match, Mapping) or not match:
        raise InvalidMatch(f"match must be a non-empty dict of JSON paths to values, e.g. {{'customer_id': 7}}, "
                           f"not {match!r}")  # fmt: skip
    parsed: dict[tuple[str, ...], Any] = {}
    for path, value in match.items():
        parsed[_segments(path)] = value
    return parsed


def _segments(path: Any) -> tuple[str, ...]:
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise InvalidMatch(f"invalid match path {_short(path)}: dotted arg keys, e.g. 'customer.id' (no empty part)")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidMatch(f"invalid match path {_short(path)}: longer than {MAX_PATH_CHARS} characters")
    parts = tuple(path.split("."))
    for part in parts:
        if len(part) > MAX_SEGMENT_CHARS:
            raise InvalidMatch(f"invalid match path {_short(path)}: a segment is longer than {MAX_SEGMENT_CHARS} "
                               "characters")  # fmt: skip
        if part.isnumeric() and not _is_index(part):
            raise InvalidMatch(f"invalid match path {_short(path)}: segment {part!r} is numeric but not ASCII "
                               "digits (a list index is written 0-9)")  # fmt: skip
    return parts


def _is_index(part: str) -> bool:
    return part.isascii() and part.isdecimal()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def parse_match(pairs: Iterable[str]) -> dict[str, Any]:
    """`PATH=VALUE` texts (the CLI's `--match customer.id=7`) as a match dict: VALUE as `parse_value` reads it
    (JSON when it parses, else the text itself: `email=a@b.c`). Raises InvalidMatch for a text without '=', an
    empty or invalid path (see `validate_match`), a value longer than MAX_VALUE_CHARS, or no pairs at all."""
    match: dict[str, Any] = {}
    for pair in pairs:
        path, sep, text = pair.partition("=")
        if not sep or not path.strip():
            raise InvalidMatch(f"invalid --match {pair!r}: use PATH=VALUE, e.g. customer.id=7")
        match[path.strip()] = parse_value(text)
    validate_match(match)
    return match


def parse_value(text: str) -> Any:
    """A typed match value from text (the CLI's `--match PATH=VALUE`, the admin's "Erase data matching" form):
    JSON when `text` parses as JSON (7, true, "7", {"a": 1}), else `text` itself (also when it is JSON nested too
    deeply to parse). Raises InvalidMatch when `text` is longer than MAX_VALUE_CHARS characters."""
    if len(text) > MAX_VALUE_CHARS:
        raise InvalidMatch(f"match value too long: {len(text)} characters, at most {MAX_VALUE_CHARS}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def arg_matches(arg: Any, match: Mapping[tuple[str, ...], Any]) -> bool:
    """Whether a decoded arg has every value of a validated `match` at its path. A path segment indexes a dict
    by key, or a list by a decimal index. Values compare equal as JSON, and a number also equals the same number
    written as a str (customer 7 is `7` or `"7"`); booleans equal only booleans."""
    return all(_same(_at(arg, path), value) for path, value in match.items())


_MISSING = object()


def _at(arg: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if isinstance(arg, Mapping) and part in arg:
            arg = arg[part]
        elif isinstance(arg, list) and _is_index(part) and int(part) < len(arg):
            arg = arg[int(part)]
        else:
            return _MISSING
    return arg


def _same(found: Any, wanted: Any) -> bool:
    if found is _MISSING:
        return False
    if isinstance(found, bool) or isinstance(wanted, bool):
        return found is wanted
    if found == wanted:
        return True
    one_text = isinstance(found, str) != isinstance(wanted, str)
    scalars = all(isinstance(v, int | float | str) for v in (found, wanted))
    return one_text and scalars and str(found) == str(wanted)
