"""The sandbox templates render in: Jinja's immutable sandbox (no attribute escapes, no
mutation of lists or dicts) with every operator, call, filter and loop held to the bounds of
``app.domain.template_bounds``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.exceptions import SecurityError, TemplateRuntimeError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

from app.domain import template_bounds as bounds

# Filters that cannot turn a short input into a huge output (no replace, center, format, indent);
# their results are checked against the bounds all the same.
SAFE_FILTERS = [
    "abs",
    "capitalize",
    "count",
    "d",
    "default",
    "first",
    "float",
    "int",
    "join",
    "last",
    "length",
    "list",
    "lower",
    "max",
    "min",
    "reverse",
    "round",
    "sort",
    "string",
    "sum",
    "title",
    "trim",
    "truncate",
    "unique",
    "upper",
    "wordcount",
]
_COUNTED = "_counted"  # the filter every loop's iterable goes through (see count_loops)


class _ReminderSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with every operator, call and filter result held to the bounds
    (app.domain.template_bounds)."""

    intercepted_binops = frozenset(bounds.BINOPS)
    plain_fields: Mapping[type, frozenset[str]] = {}
    intercepted_unops = frozenset(bounds.UNOPS)

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        return bounds.binop(operator_name, left, right)

    def call_unop(self, context: Any, operator_name: str, arg: Any) -> Any:
        return bounds.unop(operator_name, arg)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Fast path for the template variables' own data fields (the hot path of planning);
        # everything else goes through the sandbox's checks.
        fields = self.plain_fields.get(type(obj))
        if fields is not None and attribute in fields:
            return getattr(obj, attribute)
        return super().getattr(obj, attribute)

    def wrap_str_format(self, value: Any) -> Any:
        """str.format can pad to any width: refused outright (use ~ and filters)."""
        if super().wrap_str_format(value) is None:
            return None

        def refused(*_args: Any, **_kwargs: Any) -> str:
            raise SecurityError("str.format is not allowed in templates")

        return refused

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and abs(arg) > 10_000:
                raise SecurityError("numbers above 10000 are not allowed as call arguments")
        args = bounds.check_call(__obj, args, kwargs)
        return bounds.checked(super().call(__context, __obj, *args, **kwargs))


def _refuse_none(value: Any) -> Any:
    """A customer must never read "None": an empty optional field has to be guarded."""
    if value is None:
        raise TemplateRuntimeError("a value printed by the template is empty (None)")
    return value


def environment(*, plain_fields: Mapping[type, frozenset[str]]) -> SandboxedEnvironment:
    """The one environment templates compile in; ``plain_fields`` are the template variables'
    data fields, read without the sandbox's checks (the hot path of planning)."""
    env = _ReminderSandbox(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        finalize=_refuse_none,
    )
    env.globals = {"range": bounds.capped_range}
    env.filters = {name: bounds.guarded_filter(env.filters[name]) for name in SAFE_FILTERS}
    env.filters["join"] = bounds.guarded_join(env.filters["join"])
    env.filters[_COUNTED] = bounds.counted
    env.tests = dict(env.tests)
    env.plain_fields = plain_fields
    return env


def count_loops(ast: nodes.Template) -> nodes.Template:
    """Every loop iterates through the counting filter, so a render's iterations are bounded."""
    for loop in ast.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, _COUNTED, [], [], None, None, lineno=loop.lineno)
    return ast
