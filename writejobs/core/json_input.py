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
import math
from typing import Any

from writejobs.errors import ContractError

# Write requests are a few levels deep (request > batch > item > record > field);
# records nest a little more. Far past anything real, far below the recursion limit.
MAX_DEPTH = 32
# Longer than any integer or decimal a CRM field holds (Salesforce: 18 digits).
MAX_NUMBER_CHARS = 100
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

    Refused: malformed JSON or UTF-8, `NaN`/`Infinity`, numbers over
    `MAX_NUMBER_CHARS` characters or out of a double's range, nesting deeper
    than `max_depth` arrays and objects, and strings (or keys) holding a lone
    surrogate.
    """
    try:
        document = json.loads(
            body,
            parse_constant=_refuse_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
    except RecursionError:
        raise ContractError(f"request body is nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError(f"request body is not valid JSON: {str(exc)[:200]}") from None
    _check_tree(document, max_depth)
    return document


def _refuse_constant(name: str) -> Any:
    raise ContractError(f"request body holds {name}, which is not a JSON number")


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ContractError(
            f"request body holds a {len(text)}-digit number: at most {MAX_NUMBER_CHARS} digits"
        )
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ContractError(
            f"request body holds a {len(text)}-character number: "
            f"at most {MAX_NUMBER_CHARS} characters"
        )
    value = float(text)
    if not math.isfinite(value):
        raise ContractError(f"request body holds {shown(text)}, out of a number's range")
    return value


# Where a value sits, built only when an error names it: (parent, key or index).
_Loc = tuple[Any, str | int] | None


def _check_tree(document: Any, max_depth: int) -> None:
    """Depth and surrogates, without recursion (the depth may be anything up to here)."""
    stack: list[tuple[Any, int, _Loc]] = [(document, 1, None)]
    while stack:
        node, depth, loc = stack.pop()
        if isinstance(node, dict):
            if depth > max_depth:
                raise _too_deep(max_depth, loc)
            for key, value in node.items():
                _check_text(key, (loc, key))
                stack.append((value, depth + 1, (loc, key)))
        elif isinstance(node, list):
            if depth > max_depth:
                raise _too_deep(max_depth, loc)
            stack.extend((value, depth + 1, (loc, i)) for i, value in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, loc)


def _too_deep(max_depth: int, loc: _Loc) -> ContractError:
    return ContractError(
        f"request body is nested deeper than {max_depth} levels (at {_shown_loc(loc)})"
    )


def _check_text(text: str, loc: _Loc) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ContractError(
            f"{_shown_loc(loc)} holds a lone UTF-16 surrogate (such as \\ud800): not valid Unicode"
        ) from None


def _shown_loc(loc: _Loc) -> str:
    """`record.address[0].city`, cut short; a surrogate in a key is shown escaped."""
    parts: list[str] = []
    while loc is not None:
        loc, key = loc
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    if not parts:
        return "request body"
    path = "".join(reversed(parts)).removeprefix(".")
    if len(path) > SHOWN_CHARS:
        path = f"{path[:SHOWN_CHARS]}…"
    return path.encode("utf-8", "backslashreplace").decode("utf-8")
