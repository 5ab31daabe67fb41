"""Matching a job's arg against values at dotted JSON paths: how the DLQ is searched for one person's data.

Values layer: no I/O. `validate_match` checks a match (`{"customer.id": 7}`), `parse_match` reads the CLI's
`PATH=VALUE` texts, `arg_matches` tells whether a decoded arg matches.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidMatch


def validate_match(match: Any) -> dict[tuple[str, ...], Any]:
    """`match` ({"customer.id": 7, ...}: dotted JSON paths to values) as {("customer", "id"): 7, ...}.

    Raises InvalidMatch when it is not a non-empty mapping, or a path is not a str, is empty or has an empty
    segment ("a..b", ".a")."""
    if not isinstance(match, Mapping) or not match:
        raise InvalidMatch(f"match must be a non-empty dict of JSON paths to values, e.g. {{'customer_id': 7}}, "
                           f"not {match!r}")  # fmt: skip
    parsed: dict[tuple[str, ...], Any] = {}
    for path, value in match.items():
        if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
            raise InvalidMatch(f"invalid match path {path!r}: dotted arg keys, e.g. 'customer.id' (no empty part)")
        parsed[tuple(path.split("."))] = value
    return parsed


def parse_match(pairs: Iterable[str]) -> dict[str, Any]:
    """`PATH=VALUE` texts (the CLI's `--match customer.id=7`) as a match dict: VALUE is JSON when it parses
    (7, true, "7", {"a": 1}), else the text itself (`email=a@b.c`). Raises InvalidMatch for a text without '='
    or an empty path, or no pairs at all."""
    match: dict[str, Any] = {}
    for pair in pairs:
        path, sep, text = pair.partition("=")
        if not sep or not path.strip():
            raise InvalidMatch(f"invalid --match {pair!r}: use PATH=VALUE, e.g. customer.id=7")
        match[path.strip()] = parse_value(text)
    validate_match(match)
    return match


def parse_value(text: str) -> Any:
    """A typed match value: JSON when `text` parses as JSON, else `text` itself."""
    try:
        return json.loads(text)
    except ValueError:
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
        elif isinstance(arg, list) and part.isdigit() and int(part) < len(arg):
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
