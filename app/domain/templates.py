"""Message templates: Jinja2 in a sandbox, checked when saved, compiled once, rendered per text.

Templates are written by organizations, so they are untrusted code: a ``SandboxedEnvironment``
blocks attribute escapes, ``StrictUndefined`` turns a typo into an error instead of a blank in a
customer's text, printing ``None`` is an error too, and arithmetic and loops are capped so a
template cannot eat the worker.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, fields, replace
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.exceptions import SecurityError, TemplateRuntimeError
from jinja2.sandbox import SandboxedEnvironment

from app.domain.segments import SegmentInfo, count_segments
from app.errors import ValidationError

MAX_BODY_CHARS = 1600
MAX_SOURCE_CHARS = 4000
MAX_LOOP_DEPTH = 2
MAX_RANGE = 100
VARIABLES = frozenset({"customer", "organization", "subscription", "days_left", "lead_days"})

DEFAULT_TEMPLATE = (
    "Hi {{ customer.name }}, your {{ organization.name }} {{ subscription.plan }} plan "
    "{% if days_left == 0 %}expires today{% elif days_left == 1 %}expires tomorrow"
    "{% else %}expires in {{ days_left }} days{% endif %} "
    "({{ subscription.expires_on.isoformat() }}). Renew now to stay connected."
)


class TemplateProblem(ValidationError):
    """A template was refused or failed to render; the message says why."""


class _RenderFailed(TemplateProblem):
    """Evaluating the template raised, as opposed to its text being refused afterwards."""


@dataclass(frozen=True)
class CustomerVars:
    name: str


@dataclass(frozen=True)
class OrganizationVars:
    name: str


@dataclass(frozen=True)
class SubscriptionVars:
    plan: str
    expires_on: date
    amount: Decimal | None
    currency: str | None


_PLAIN_FIELDS: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in fields(cls))
    for cls in (CustomerVars, OrganizationVars, SubscriptionVars)
}


def _capped_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise SecurityError(f"range() is limited to {MAX_RANGE} items in templates")
    return r


def _capped_mul(left: Any, right: Any) -> Any:
    for seq, count in ((left, right), (right, left)):
        sized = isinstance(seq, str | list | tuple) and isinstance(count, int)
        if sized and len(seq) * count > MAX_BODY_CHARS:
            raise SecurityError("repeating text beyond the message size is not allowed")
    return operator.mul(left, right)


def _capped_pow(left: Any, right: Any) -> Any:
    if isinstance(right, int | float) and abs(right) > 100:
        raise SecurityError("exponents above 100 are not allowed in templates")
    return operator.pow(left, right)


def _capped_text_op(op: Any, left: Any, right: Any) -> Any:
    result = op(left, right)
    if isinstance(result, str | list | tuple) and len(result) > MAX_BODY_CHARS:
        raise SecurityError("text beyond the message size is not allowed")
    return result


# Filters that cannot turn a short input into a huge output (no replace, center, format, indent).
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
# Statements a text template needs; assignments, macros and includes are how size bombs and
# recursion are built, so they are refused when the template is saved.
ALLOWED_STATEMENTS = (nodes.Output, nodes.If, nodes.For)


class _ReminderSandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "*":
            return _capped_mul(left, right)
        if operator_name == "**":
            return _capped_pow(left, right)
        if operator_name == "+":
            return _capped_text_op(operator.add, left, right)
        if operator_name == "%":
            return _capped_text_op(operator.mod, left, right)
        return super().call_binop(context, operator_name, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Fast path for the template variables' own data fields (the hot path of planning);
        # everything else goes through the sandbox's checks.
        fields = _PLAIN_FIELDS.get(type(obj))
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
        return super().call(__context, __obj, *args, **kwargs)


def _refuse_none(value: Any) -> Any:
    """A customer must never read "None": an empty optional field has to be guarded."""
    if value is None:
        raise TemplateRuntimeError("a value printed by the template is empty (None)")
    return value


def _environment() -> SandboxedEnvironment:
    env = _ReminderSandbox(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        finalize=_refuse_none,
    )
    env.globals = {"range": _capped_range}
    env.filters = {name: env.filters[name] for name in SAFE_FILTERS}
    env.tests = dict(env.tests)
    return env


ENV = _environment()


def _loop_depth(node: nodes.Node, depth: int = 0) -> int:
    here = depth + 1 if isinstance(node, nodes.For) else depth
    return max([here, *(_loop_depth(child, here) for child in node.iter_child_nodes())])


@lru_cache(maxsize=4096)
def compile_template(source: str) -> Any:
    """Parse and compile once per distinct source (cached); raise TemplateProblem if invalid."""
    if len(source) > MAX_SOURCE_CHARS:
        raise TemplateProblem(
            f"template is {len(source)} characters; the limit is {MAX_SOURCE_CHARS}"
        )
    try:
        ast = ENV.parse(source)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f" on line {line}" if line else ""
        raise TemplateProblem(f"template syntax error{where}: {exc.message}") from None
    try:
        declared = _undeclared(ast)
    except TemplateError as exc:
        raise TemplateProblem(f"template error: {exc.message}") from None
    # Jinja's own names (``self``) are never reported as undeclared: refuse them here.
    declared |= {n.name for n in ast.find_all(nodes.Name) if n.name == "self"}
    unknown = sorted(declared - VARIABLES)
    if unknown:
        raise TemplateProblem(
            f"unknown variable {', '.join(unknown)}; use {', '.join(sorted(VARIABLES))}"
        )
    for node in ast.find_all(nodes.Stmt):
        if not isinstance(node, ALLOWED_STATEMENTS):
            kind = type(node).__name__.lower()
            raise TemplateProblem(f"{{% {kind} %}} is not allowed; use if, for and output only")
    if _loop_depth(ast) > MAX_LOOP_DEPTH:
        raise TemplateProblem(f"loops nested deeper than {MAX_LOOP_DEPTH} are not allowed")
    try:
        return ENV.from_string(ast)
    except TemplateError as exc:
        raise TemplateProblem(f"template error: {exc.message}") from None


def _undeclared(ast: nodes.Template) -> set[str]:
    from jinja2 import meta

    return set(meta.find_undeclared_variables(ast))


def _render(template: Any, context: dict[str, Any], *, streamed: bool) -> str:
    try:
        if not streamed:
            body = str(template.render(context))
        else:
            # Untrusted source on save: stop as soon as the output passes the limit.
            chunks: list[str] = []
            size = 0
            for chunk in template.generate(context):
                size += len(chunk)
                if size > MAX_BODY_CHARS:
                    break
                chunks.append(chunk)
            body = "".join(chunks) if size <= MAX_BODY_CHARS else "x" * (MAX_BODY_CHARS + 1)
    except SecurityError as exc:
        raise TemplateProblem(f"template not allowed: {exc}") from None
    except TemplateError as exc:
        raise _RenderFailed(f"template failed to render: {exc}") from None
    except RecursionError:
        raise _RenderFailed("template failed to render: recursion too deep") from None
    except Exception as exc:  # noqa: BLE001 - any failure of untrusted code is the template's
        raise _RenderFailed(f"template failed to render: {type(exc).__name__}: {exc}") from None
    if len(body) > MAX_BODY_CHARS:
        raise TemplateProblem(f"rendered text is longer than {MAX_BODY_CHARS} characters")
    body = body.strip()
    if not body:
        raise TemplateProblem("rendered text is empty")
    return body


def render(
    source: str,
    *,
    customer: CustomerVars,
    organization: OrganizationVars,
    subscription: SubscriptionVars,
    days_left: int,
    lead_days: int,
    streamed: bool = False,
) -> str:
    """The text for one customer; raise TemplateProblem with the reason if it cannot be made.

    Sources reaching here were checked when saved; ``streamed`` is for that first check.
    """
    context = {
        "customer": customer,
        "organization": organization,
        "subscription": subscription,
        "days_left": days_left,
        "lead_days": lead_days,
    }
    return _render(compile_template(source), context, streamed=streamed)


def render_or_default(
    source: str,
    *,
    customer: CustomerVars,
    organization: OrganizationVars,
    subscription: SubscriptionVars,
    days_left: int,
    lead_days: int,
    streamed: bool = False,
) -> tuple[str, str | None]:
    """The text, and None; or the built-in default's text and why the stored template failed.

    A reminder in the default wording beats no reminder; the problem is returned so it is logged.
    """
    kwargs: dict[str, Any] = {
        "customer": customer,
        "organization": organization,
        "subscription": subscription,
        "days_left": days_left,
        "lead_days": lead_days,
        "streamed": streamed,
    }
    try:
        return render(source, **kwargs), None
    except TemplateProblem as exc:
        if source == DEFAULT_TEMPLATE:
            raise
        return render(DEFAULT_TEMPLATE, **kwargs), str(exc)


SAMPLE_CUSTOMER = CustomerVars(name="Alex Example")
SAMPLE_SUBSCRIPTION = SubscriptionVars(
    plan="Fiber 500", expires_on=date(2030, 1, 15), amount=Decimal("49.90"), currency="USD"
)


@dataclass(frozen=True)
class Preview:
    body: str
    length: int
    segments: SegmentInfo


# Imports may leave these empty, alone or together: a save renders the sample with every subset
# blanked, single fields first so a refusal names the fewest.
OPTIONAL_FIELDS = ("amount", "currency")


def _blanked(absent: tuple[str, ...]) -> SubscriptionVars:
    blank: dict[str, Any] = dict.fromkeys(absent)
    return replace(SAMPLE_SUBSCRIPTION, **blank)


_SAMPLES_WITHOUT = [
    (absent, _blanked(absent))
    for size in range(1, len(OPTIONAL_FIELDS) + 1)
    for absent in itertools.combinations(OPTIONAL_FIELDS, size)
]


def sample_render(
    source: str,
    *,
    organization_name: str,
    lead_days: int,
    max_segments: int | None = None,
    subscription: SubscriptionVars = SAMPLE_SUBSCRIPTION,
) -> Preview:
    """Render sample data the way a save does; raise TemplateProblem if it would be refused."""
    body = render(
        source,
        customer=SAMPLE_CUSTOMER,
        organization=OrganizationVars(name=organization_name),
        subscription=subscription,
        days_left=lead_days,
        lead_days=lead_days,
        streamed=True,
    )
    info = count_segments(body)
    if max_segments is not None and info.segments > max_segments:
        forced = ""
        if info.non_gsm_chars:
            shown = " ".join(repr(ch) for ch in info.non_gsm_chars[:10])
            forced = f" (UCS-2 forced by {shown})"
        raise TemplateProblem(
            f"sample text takes {info.segments} {info.encoding} segments{forced}; "
            f"the limit is {max_segments} (SMS_MAX_SEGMENTS)"
        )
    return Preview(body=body, length=len(body), segments=info)


def _absent_problem(problem: TemplateProblem, absent: tuple[str, ...]) -> TemplateProblem:
    names = " and ".join(f"subscription.{name}" for name in absent)
    if not isinstance(problem, _RenderFailed):  # e.g. empty text or too many segments
        return TemplateProblem(f"{problem} for customers without {names}")
    which, it = ("which is", "it") if len(absent) == 1 else ("which are", "them")
    return TemplateProblem(
        f"template prints {names}, {which} empty for some customers; "
        f"guard {it}: {{% if {names} %}}…{{% endif %}}"
    )


def validate_template(
    source: str, *, organization_name: str, lead_days: list[int], max_segments: int
) -> list[Preview]:
    """Every check a save makes, for each lead day and with optional fields present or absent.

    Returns the all-present samples, one per lead day, as the preview.
    """
    compile_template(source)
    previews = []
    for lead in lead_days:
        previews.append(
            sample_render(
                source,
                organization_name=organization_name,
                lead_days=lead,
                max_segments=max_segments,
            )
        )
        for absent, subscription in _SAMPLES_WITHOUT:
            try:
                sample_render(
                    source,
                    organization_name=organization_name,
                    lead_days=lead,
                    max_segments=max_segments,
                    subscription=subscription,
                )
            except TemplateProblem as exc:
                raise _absent_problem(exc, absent) from None
    return previews
