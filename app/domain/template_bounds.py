"""The resource bounds of a template render: what one text may cost the worker rendering it.

Templates are written by tenants and rendered inside the shared workers, so escaping the sandbox
is not the only harm: ``99**99**99**99`` or a chain of ``.replace('', '0123456789')`` freezes a
worker in one C call that no timer can interrupt. So every value an operator, a method or a
filter produces is checked, and the expensive ones are refused *before* they are computed (the
size of a power, a padding width, a replacement's length). Loops count their iterations, a
recursive loop its depth, and every hook looks at the render's clock: together these bound a
render's time by the budget, because between two checks a template runs at most its own
(bounded) source once.

A bound hit raises ``BoundExceeded``, a ``SecurityError``: templates cannot catch it, and the
caller tells it apart from an ordinary failure (``templates.TemplateRefused``).
"""

from __future__ import annotations

import decimal
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar, Token
from decimal import Decimal
from functools import wraps
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext

MAX_TEXT = 1600  # characters (or items) any value may have: a whole text's worth
MAX_INT_DIGITS = 300
MAX_INT_BITS = math.ceil(MAX_INT_DIGITS * math.log2(10))
MAX_POWER = 2**64  # the largest result of ``**``: nothing in a text needs more
MAX_RANGE = 100
MAX_LOOP_DEPTH = 2
# Loop iterations in one render, all loops together: two nested range() loops at their largest.
MAX_ITERATIONS = MAX_RANGE + MAX_RANGE**2
DEFAULT_BUDGET_MS = 50.0


class BoundExceeded(SecurityError):
    """A render went past one of the bounds; the message names which."""


class OutOfTime(BoundExceeded):
    """... the time budget."""


#: The render's clock: the CPU time of the rendering thread. A template's cost is what it
#: computes; on a busy machine (other threads holding the GIL, other processes the cores) a
#: render's wall time grows, and an ordinary template must not fail its text for that.
clock = time.thread_time
#: A thread's CPU time grows no faster than this clock, which is read without a system call
#: (the CPU clock is not): until a budget's time has passed on it, the budget cannot be spent.
wall = time.perf_counter


class Budget:
    """One render's allowance: a deadline on the rendering thread's CPU clock and the
    iterations left.

    Entered as a context manager, it is the budget the hooks of this thread (or task) check.
    """

    __slots__ = ("_sure_until", "_token", "deadline", "iterations", "ms")

    def __init__(self, ms: float) -> None:
        outer = _BUDGET.get()
        now = clock()
        self.deadline = now + ms / 1000
        self.ms = ms
        if outer is not None and outer.deadline < self.deadline:
            # Never past an enclosing budget's deadline: a save's checks share one clock.
            self.deadline, self.ms = outer.deadline, outer.ms
        # Checks before this (on ``wall``) need no read of the CPU clock: it cannot have
        # reached the deadline yet. A render's checks then cost a few ns, not a system call.
        self._sure_until = wall() + (self.deadline - now)
        self.iterations = MAX_ITERATIONS
        self._token: Token[Budget | None] | None = None

    def __enter__(self) -> Budget:
        self._token = _BUDGET.set(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._token is not None
        _BUDGET.reset(self._token)

    def check(self) -> None:
        if wall() < self._sure_until:
            return
        if clock() > self.deadline:
            raise OutOfTime(
                f"rendering took longer than {self.ms:g} ms (TEMPLATE_RENDER_BUDGET_MS)"
            )

    def iterate(self) -> None:
        self.iterations -= 1
        if self.iterations < 0:
            raise BoundExceeded(f"loops may run at most {MAX_ITERATIONS} times in all per text")
        self.check()


_BUDGET: ContextVar[Budget | None] = ContextVar("template_budget", default=None)
_SIZED = (str, bytes, list, tuple, dict, set, frozenset)
budget = Budget  # ``with budget(ms):`` reads as what it does


def check_clock() -> None:
    current = _BUDGET.get()
    if current is not None:
        current.check()


def checked(value: Any) -> Any:
    """``value`` if it is within the bounds; raise BoundExceeded naming the bound otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise BoundExceeded(f"numbers over {MAX_INT_DIGITS} digits are not allowed")
    elif isinstance(value, Decimal):
        if value.is_finite() and value and abs(value.adjusted()) > MAX_INT_DIGITS:
            raise BoundExceeded(f"numbers over {MAX_INT_DIGITS} digits are not allowed")
    elif isinstance(value, _SIZED) and len(value) > MAX_TEXT:
        raise BoundExceeded(f"text or lists over {MAX_TEXT} characters are not allowed")
    return value


def _text_limit(what: str) -> BoundExceeded:
    return BoundExceeded(f"{what} beyond {MAX_TEXT} characters is not allowed")


def capped_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise BoundExceeded(f"range() is limited to {MAX_RANGE} items in templates")
    return r


# --- operators ----------------------------------------------------------------------------------


def _power(left: Any, right: Any) -> Any:
    too_big = BoundExceeded("results of ** above 2**64 are not allowed")
    whole = isinstance(left, int) and isinstance(right, int)
    # A lower bound of the result's size, known before computing it.
    if whole and right > 0 and (abs(left).bit_length() - 1) * right > MAX_POWER.bit_length():
        raise too_big
    result = operator.pow(left, right)
    if isinstance(result, int | float | Decimal) and _magnitude(result) > MAX_POWER:
        raise too_big
    return result


def _magnitude(number: Any) -> Any:
    return abs(number)


def _times(left: Any, right: Any) -> Any:
    for seq, count in ((left, right), (right, left)):
        sized = isinstance(seq, str | list | tuple) and isinstance(count, int)
        if sized and len(seq) * count > MAX_TEXT:
            raise _text_limit("repeating text")
    whole = isinstance(left, int) and isinstance(right, int)
    if whole and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
        raise BoundExceeded(f"numbers over {MAX_INT_DIGITS} digits are not allowed")
    return operator.mul(left, right)


# printf-style widths and precisions: ``'%99999999s' % x`` would pad before any check.
_PRINTF_SIZES = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        for width, precision in _PRINTF_SIZES.findall(left):
            for size in (width, precision):
                if size == "*" or (size and int(size) > MAX_TEXT):
                    raise _text_limit("padding")
    return operator.mod(left, right)


BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": _times,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": _modulo,
    "**": _power,
}
UNOPS: dict[str, Callable[[Any], Any]] = {"+": operator.pos, "-": operator.neg}


def binop(name: str, left: Any, right: Any) -> Any:
    check_clock()
    try:
        return checked(BINOPS[name](left, right))
    except (OverflowError, decimal.Overflow):
        raise BoundExceeded(f"the result of {name} is too large") from None


def unop(name: str, arg: Any) -> Any:
    return checked(UNOPS[name](arg))


# --- method calls -------------------------------------------------------------------------------

# str methods whose result can be far longer than the string: checked before they run.
_STR_WIDTH = {"center", "ljust", "rjust", "zfill"}
# ... and those refused outright (their output size cannot be known cheaply beforehand).
_STR_REFUSED = {"expandtabs", "translate", "maketrans", "format", "format_map"}


def _replace_size(text: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    values = list(args) + [kwargs[k] for k in ("old", "new", "count") if k in kwargs]
    if len(values) < 2 or not all(isinstance(v, type(text)) for v in values[:2]):
        return len(text)  # a wrong call: let str.replace raise its own error
    old, new = values[0], values[1]
    times = text.count(old) if old else len(text) + 1
    if len(values) > 2 and isinstance(values[2], int) and values[2] >= 0:
        times = min(times, values[2])
    return len(text) + times * (len(new) - len(old))


def _join_size(sep: Any, items: list[Any]) -> int:
    sized = (i for i in items if isinstance(i, str | bytes))
    return len(sep) * max(len(items) - 1, 0) + sum(len(i) for i in sized)


def check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a call whose result would be past the bounds, before it is made; returns the
    arguments to make it with (an iterable given to ``join`` is read once, here)."""
    check_clock()
    if isinstance(obj, LoopContext):
        # ``loop(...)`` in a recursive loop: one level deeper, over a counted iterable.
        if obj.depth >= MAX_LOOP_DEPTH:
            raise BoundExceeded(f"recursive loops deeper than {MAX_LOOP_DEPTH} are not allowed")
        return tuple(counted(a) if i == 0 else a for i, a in enumerate(args))
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if not isinstance(owner, str | bytes):
        return args
    if name in _STR_REFUSED:
        raise BoundExceeded(f"str.{name} is not allowed in templates")
    if name in _STR_WIDTH:
        width = args[0] if args else kwargs.get("width", 0)
        if isinstance(width, int) and width > MAX_TEXT:
            raise _text_limit("padding")
    elif name == "replace":
        if _replace_size(owner, args, kwargs) > MAX_TEXT:
            raise _text_limit("replacing text")
    elif name == "join" and args:
        items = list(_bounded_items(args[0]))
        if _join_size(owner, items) > MAX_TEXT:
            raise _text_limit("joining text")
        return (items, *args[1:])
    return args


def _bounded_items(iterable: Iterable[Any]) -> Iterator[Any]:
    for n, item in enumerate(iterable):
        if n >= MAX_TEXT:
            raise BoundExceeded(f"text or lists over {MAX_TEXT} characters are not allowed")
        yield item


# --- filters and loops --------------------------------------------------------------------------


def guarded_filter(func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose result is checked (filters are called directly, not through ``call``)."""

    @wraps(func)  # keeps Jinja's pass_context / pass_environment marks
    def filtered(*args: Any, **kwargs: Any) -> Any:
        check_clock()
        return checked(func(*args, **kwargs))

    return filtered


def guarded_join(join: Callable[..., Any]) -> Callable[..., Any]:
    """The ``join`` filter, refused before it builds a text past the bound."""

    @wraps(join)
    def joined(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        check_clock()
        items = list(_bounded_items(value))
        if attribute is None and _join_size(str(d), [str(i) for i in items]) > MAX_TEXT:
            raise _text_limit("joining text")
        return checked(join(eval_ctx, items, d, attribute))

    return joined


def counted(iterable: Any) -> Iterator[Any]:
    """Iterate ``iterable`` for a loop, each step counted against the render's budget."""
    current = _BUDGET.get()
    for item in iterable:
        if current is not None:
            current.iterate()
        yield item
