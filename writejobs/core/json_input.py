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
# A surrogate's own UTF-8 bytes (json.loads decodes bytes with "surrogatepass").
_SURROGATE_BYTES = re.compile(rb"\xed[\xa0-\xbf]")
# Every digit as "0": a run of digits long enough for an integer past the limit is
# then one substring search.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGIT_RUN = b"0" * (MAX_INTEGER_DIGITS + 1)
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

    The stdlib parser does the parsing at C speed, with one hook for float literals
    (which stops at one out of range); one pass over the result then checks what
    else it let through, unless the bytes alone show there is nothing to find.
    """
    try:
        # json.loads(body, …) as it reads bytes, with decoders built once, not per call.
        text = body.decode(json.detect_encoding(body), "surrogatepass")
        try:
            document = _DECODER.decode(text)
        except _OutOfRange:
            # Read again as it is, for `_check_tree` to say where the number is.
            _check_tree(_PLAIN_DECODER.decode(text), max_depth)
            raise ContractError(_out_of_range("request body")) from None  # not reached
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
    lone surrogate); no run of digits long enough for an integer out of bounds.
    (A float out of a double's range never gets this far: the parser's `_finite`
    stops at it.) Any doubt, and the parsed tree is walked."""
    return (
        b"\x00" not in body[:4]  # UTF-8 (json.loads would detect UTF-16 or 32 by NULs)
        and body.count(b"[") + body.count(b"{") <= max_depth
        and b"\\u" not in body
        and (body.isascii() or _SURROGATE_BYTES.search(body) is None)
        and (
            len(body) <= MAX_INTEGER_DIGITS
            or _LONG_DIGIT_RUN not in body.translate(_DIGITS_AS_ZERO)
        )
    )


def _refuse_constant(name: str) -> Any:
    raise ContractError(f"request body holds {name}, which is not a JSON number")


class _OutOfRange(Exception):
    """A float literal past a double's range (`1e400`), met while parsing."""


def _finite(literal: str) -> float:
    """The parser's reading of a float literal (as `float`), stopping at one out of range
    (called for float literals only: most bodies hold few, integers are read in C)."""
    value = float(literal)
    if not isfinite(value):
        raise _OutOfRange
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)
_PLAIN_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


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
