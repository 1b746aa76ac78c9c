"""Reading a request body as JSON without trusting it: bounded depth, numbers and text.

Python's `json` happily returns what no provider can take and what breaks us
later: `NaN` and `Infinity` (sent on as `null`, which blanks a field), `1e400`
(infinity again), a 5,000-digit integer (past `int`'s conversion limit), a
document nested a thousand levels deep (a `RecursionError` in whatever walks it
next) and lone UTF-16 surrogates such as `"\\ud800"` (which no UTF-8 encoder,
database or HTTP client accepts). `load_json` refuses all of them with a
`ContractError` naming the problem, so each is a 400 at intake, before any
operation exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from math import isfinite
from typing import Any

from writejobs.errors import ContractError

# Write requests are a few levels deep (request > batch > item > record > field);
# records nest a little more. Far past anything real, far below the recursion limit.
MAX_DEPTH = 32
# More than any integer a CRM field holds (Salesforce: 18 digits).
MAX_INTEGER_DIGITS = 100
_INTEGER_LIMIT = 10**MAX_INTEGER_DIGITS
# Digits enough for an integer past the limit, an exponent of three digits, or a
# surrogate's own UTF-8 bytes (json.loads decodes bytes with "surrogatepass").
_SUSPECT_BYTES = re.compile(
    rb"[0-9]{%d}|[eE][+-]?[0-9]{3}|\xed[\xa0-\xbf]" % (MAX_INTEGER_DIGITS + 1)
)
# How much of a caller's value an error message quotes.
SHOWN_CHARS = 60


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` cut to `limit` characters, so an error never echoes a huge input."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(str(value))} characters)"


def load_json(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON document in `body`, or `ContractError` naming why it is refused.

    Refused: malformed JSON or UTF-8, `NaN`/`Infinity`, integers of more than
    `MAX_INTEGER_DIGITS` digits, numbers out of a double's range, nesting deeper
    than `max_depth` arrays and objects, and strings (or keys) holding a lone
    surrogate.

    The stdlib parser does the parsing at C speed with no per-value hooks; one
    pass over the result then checks what it let through.
    """
    try:
        document = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise ContractError(f"request body is nested deeper than {max_depth} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ContractError(f"request body is not valid JSON: {str(exc)[:200]}") from None
    except ValueError:
        # int() refusing a literal past its digit limit (4,300) is the one other ValueError.
        raise ContractError(_too_many_digits()) from None
    if not _surely_harmless(body, max_depth):
        _check_tree(document, max_depth)
    return document


def _surely_harmless(body: bytes, max_depth: int) -> bool:
    """Whether `body` cannot hold what `_check_tree` looks for, by a few C-speed scans
    of the bytes (most write bodies are a small record): too few brackets to nest
    `max_depth` deep; no `\\u` escape and no surrogate's bytes (the two ways to a
    lone surrogate); no run of digits or exponent long enough for an integer or a
    float out of bounds. Any doubt, and the parsed tree is walked."""
    return (
        b"\x00" not in body[:4]  # UTF-8 (json.loads would detect UTF-16 or 32 by NULs)
        and body.count(b"[") + body.count(b"{") <= max_depth
        and b"\\u" not in body
        and _SUSPECT_BYTES.search(body) is None
    )


def _refuse_constant(name: str) -> Any:
    raise ContractError(f"request body holds {name}, which is not a JSON number")


def _too_many_digits(where: str = "request body") -> str:
    return f"{where} holds an integer of more than {MAX_INTEGER_DIGITS} digits"


Key = str | int


def _check_tree(document: Any, max_depth: int) -> None:
    """Depth, numbers and surrogates, without recursion (the depth may be anything here).

    Written for speed: a 10 MiB body may hold millions of values. A stack of
    iterators walks the containers (its height is the depth), `path` holds the
    keys that lead to the one being read, and a value's location is spelled out
    only for an error.
    """
    if type(document) is not dict and type(document) is not list:
        _check_leaf(document, [])
        return
    stack: list[Iterator[tuple[Key, Any]]] = [_items(document)]
    path: list[Key] = []
    while stack:
        for key, value in stack[-1]:
            if type(key) is str and not key.isascii():
                _check_text(key, path, key)
            kind = type(value)
            if kind is str:
                if not value.isascii():
                    _check_text(value, path, key)
            elif kind is dict or kind is list:
                if len(stack) >= max_depth:
                    raise ContractError(
                        f"request body is nested deeper than {max_depth} levels "
                        f"(at {_shown_path(path, key)})"
                    )
                if value:
                    stack.append(_items(value))
                    path.append(key)
                    break
            elif kind is int:
                if not -_INTEGER_LIMIT < value < _INTEGER_LIMIT:
                    raise ContractError(_too_many_digits(_shown_path(path, key)))
            elif kind is float and not isfinite(value):
                raise ContractError(_out_of_range(_shown_path(path, key)))
        else:
            stack.pop()
            if path:
                path.pop()


def _items(container: dict[str, Any] | list[Any]) -> Iterator[tuple[Key, Any]]:
    return iter(container.items()) if type(container) is dict else enumerate(container)


def _check_leaf(value: Any, path: list[Key]) -> None:
    """A document that is a bare value rather than an object or array."""
    if type(value) is int and not -_INTEGER_LIMIT < value < _INTEGER_LIMIT:
        raise ContractError(_too_many_digits())
    if type(value) is float and not isfinite(value):
        raise ContractError(_out_of_range("request body"))
    if type(value) is str:
        _check_text(value, path, None)


def _out_of_range(where: str) -> str:
    return f"{where} holds a number out of a double's range"


def _check_text(text: str, path: list[Key], key: Key | None) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ContractError(
            f"{_shown_path(path, key)} holds a lone UTF-16 surrogate (such as \\ud800): "
            "not valid Unicode"
        ) from None


def _shown_path(path: list[Key], key: Key | None) -> str:
    """`record.address[0].city`, cut short; a surrogate in a key is shown escaped."""
    keys = path if key is None else [*path, key]
    if not keys:
        return "request body"
    text = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).removeprefix(".")
    if len(text) > SHOWN_CHARS:
        text = f"{text[:SHOWN_CHARS]}…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
