"""Message templates: Jinja2 in a sandbox, checked when saved, compiled once, rendered per text.

Templates are written by organizations, so they are untrusted code: the sandbox
(``template_sandbox``) blocks attribute escapes, ``StrictUndefined`` turns a typo into an error
instead of a blank in a customer's text, printing ``None`` is an error too, and every render is
held to the bounds of ``template_bounds`` (sizes, iterations, recursion, a time budget) so a
template cannot eat the worker. A save also runs every branch against those bounds
(``template_probe``), not only the branches the sample customer takes.

Two kinds of failure at send time: an ordinary one (a field that is empty for this customer)
gives the text the built-in wording (R7); ``TemplateRefused`` (a bound, or the sandbox) means
the organization's template is at fault for everyone, and the text fails.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields, replace
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, nodes
from jinja2.exceptions import SecurityError

from app.domain import template_bounds as bounds
from app.domain import template_probe as probe
from app.domain import template_sandbox as sandbox
from app.domain.segments import SegmentInfo, count_segments
from app.domain.template_bounds import DEFAULT_BUDGET_MS, MAX_LOOP_DEPTH, MAX_TEXT
from app.errors import ValidationError

MAX_BODY_CHARS = MAX_TEXT
MAX_SOURCE_CHARS = 4000
VARIABLES = frozenset({"customer", "organization", "subscription", "days_left", "lead_days"})

DEFAULT_TEMPLATE = (
    "Hi {{ customer.name }}, your {{ organization.name }} {{ subscription.plan }} plan "
    "{% if days_left == 0 %}expires today{% elif days_left == 1 %}expires tomorrow"
    "{% else %}expires in {{ days_left }} days{% endif %} "
    "({{ subscription.expires_on.isoformat() }}). Renew now to stay connected."
)


class TemplateProblem(ValidationError):
    """A template was refused or failed to render; the message says why."""


class TemplateRefused(TemplateProblem):
    """The template went past a bound (or the sandbox): the organization's template is at fault
    whatever the customer, so its text fails instead of going out in the built-in wording."""


class TemplateTooSlow(TemplateRefused):
    """The render ran out of its time budget (TEMPLATE_RENDER_BUDGET_MS)."""


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


# Statements a text template needs; assignments, macros and includes are how size bombs and
# recursion are built, so they are refused when the template is saved.
ALLOWED_STATEMENTS = (nodes.Output, nodes.If, nodes.For)
ENV = sandbox.environment(plain_fields=_PLAIN_FIELDS)


def _loop_depth(node: nodes.Node, depth: int = 0) -> int:
    here = depth + 1 if isinstance(node, nodes.For) else depth
    return max([here, *(_loop_depth(child, here) for child in node.iter_child_nodes())])


def parse_template(source: str) -> nodes.Template:
    """The checked syntax tree of a source; raise TemplateProblem if it is refused."""
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
    except RecursionError:
        raise TemplateProblem("template syntax error: expressions nested too deeply") from None
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
    problem = probe.static_problem(ast)
    if problem is not None:
        raise TemplateRefused(f"template not allowed: {problem}")
    return ast


def _compiled(ast: nodes.Template) -> Any:
    try:
        return ENV.from_string(sandbox.count_loops(ast))
    except TemplateError as exc:
        raise TemplateProblem(f"template error: {exc.message}") from None
    except RecursionError:
        raise TemplateProblem("template error: expressions nested too deeply") from None


def compile_template(source: str) -> Any:
    """Parse and compile once per distinct source (cached, refusals too: a stored template
    refused for every row of a day is parsed once); raise TemplateProblem if invalid."""
    compiled = _compile_cached(source)
    if isinstance(compiled, TemplateProblem):
        raise type(compiled)(str(compiled))
    return compiled


@lru_cache(maxsize=4096)
def _compile_cached(source: str) -> Any:
    try:
        return _compiled(parse_template(source))
    except TemplateProblem as exc:
        return exc


def _undeclared(ast: nodes.Template) -> set[str]:
    from jinja2 import meta

    return set(meta.find_undeclared_variables(ast))


def _render(template: Any, context: dict[str, Any], *, budget_ms: float) -> str:
    """Render under the bounds and a budget of ``budget_ms``, stopping as soon as the output
    passes the limit."""
    chunks: list[str] = []
    size = 0
    try:
        with bounds.budget(budget_ms):
            # What Template.render does, a chunk at a time (generate() adds a layer per chunk);
            # the clock is checked by the hooks and loops that make the chunks.
            for chunk in template.root_render_func(template.new_context(context)):
                size += len(chunk)
                if size > MAX_BODY_CHARS:
                    break
                chunks.append(chunk)
    except bounds.OutOfTime as exc:
        raise TemplateTooSlow(f"template not allowed: {exc}") from None
    except SecurityError as exc:  # a bound, or the sandbox: the template is at fault
        raise TemplateRefused(f"template not allowed: {exc}") from None
    except TemplateError as exc:
        raise _RenderFailed(f"template failed to render: {exc}") from None
    except (RecursionError, MemoryError):
        raise TemplateRefused("template not allowed: it nests too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any failure of untrusted code is the template's
        raise _RenderFailed(f"template failed to render: {type(exc).__name__}: {exc}") from None
    if size > MAX_BODY_CHARS:
        raise TemplateProblem(f"rendered text is longer than {MAX_BODY_CHARS} characters")
    body = "".join(chunks).strip()
    if not body:
        raise TemplateProblem("rendered text is empty")
    return body


def _context(
    customer: CustomerVars,
    organization: OrganizationVars,
    subscription: SubscriptionVars,
    days_left: int,
    lead_days: int,
) -> dict[str, Any]:
    return {
        "customer": customer,
        "organization": organization,
        "subscription": subscription,
        "days_left": days_left,
        "lead_days": lead_days,
    }


def render(
    source: str,
    *,
    customer: CustomerVars,
    organization: OrganizationVars,
    subscription: SubscriptionVars,
    days_left: int,
    lead_days: int,
    budget_ms: float = DEFAULT_BUDGET_MS,
) -> str:
    """The text for one customer; raise TemplateProblem with the reason if it cannot be made
    (TemplateRefused when the template went past a bound, the budget included)."""
    context = _context(customer, organization, subscription, days_left, lead_days)
    return _render(compile_template(source), context, budget_ms=budget_ms)


def render_or_default(
    source: str,
    *,
    customer: CustomerVars,
    organization: OrganizationVars,
    subscription: SubscriptionVars,
    days_left: int,
    lead_days: int,
    budget_ms: float = DEFAULT_BUDGET_MS,
) -> tuple[str, str | None]:
    """The text, and None; or the built-in default's text and why the stored template failed.

    A reminder in the default wording beats no reminder; the problem is returned so it is logged.
    A template that went past a bound is not excused: TemplateRefused is raised, and that text
    fails (the organization's template is at fault, for every customer alike).
    """
    kwargs: dict[str, Any] = {
        "customer": customer,
        "organization": organization,
        "subscription": subscription,
        "days_left": days_left,
        "lead_days": lead_days,
        "budget_ms": budget_ms,
    }
    try:
        return render(source, **kwargs), None
    except TemplateRefused:
        raise
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
    budget_ms: float = DEFAULT_BUDGET_MS,
) -> Preview:
    """Render sample data the way a save does; raise TemplateProblem if it would be refused."""
    body = render(
        source,
        customer=SAMPLE_CUSTOMER,
        organization=OrganizationVars(name=organization_name),
        subscription=subscription,
        days_left=lead_days,
        lead_days=lead_days,
        budget_ms=budget_ms,
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
        kind = TemplateRefused if isinstance(problem, TemplateRefused) else TemplateProblem
        return kind(f"{problem} for customers without {names}")
    which, it = ("which is", "it") if len(absent) == 1 else ("which are", "them")
    return TemplateProblem(
        f"template prints {names}, {which} empty for some customers; "
        f"guard {it}: {{% if {names} %}}…{{% endif %}}"
    )


#: A save's checks together may take this many render budgets.
SAVE_BUDGETS = 10


def validate_template(
    source: str,
    *,
    organization_name: str,
    lead_days: list[int],
    max_segments: int,
    budget_ms: float = DEFAULT_BUDGET_MS,
) -> list[Preview]:
    """Every check a save makes: the sample texts for each lead day with optional fields present
    or absent, then every branch against the bounds (``probe_branches``), all within
    ``SAVE_BUDGETS`` render budgets.

    Returns the all-present samples, one per lead day, as the preview.
    """
    compile_template(source)
    previews = []
    with bounds.budget(budget_ms * SAVE_BUDGETS):
        for lead in lead_days:
            previews.append(
                sample_render(
                    source,
                    organization_name=organization_name,
                    lead_days=lead,
                    max_segments=max_segments,
                    budget_ms=budget_ms,
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
                        budget_ms=budget_ms,
                    )
                except TemplateProblem as exc:
                    raise _absent_problem(exc, absent) from None
        probe_branches(
            source, organization_name=organization_name, lead_days=lead_days, budget_ms=budget_ms
        )
    return previews


def probe_branches(
    source: str, *, organization_name: str, lead_days: list[int], budget_ms: float
) -> None:
    """Run every expression and loop of the template whatever its branches decide
    (app.domain.template_probe), for the smallest and largest lead day, with the optional
    fields present and absent; raise TemplateRefused if one goes past a bound."""
    if not lead_days:
        return
    probes = _compiled(probe.probe_ast(parse_template(source)))
    organization = OrganizationVars(name=organization_name)
    blank = _SAMPLES_WITHOUT[-1][1]
    for lead in sorted({min(lead_days), max(lead_days)}):
        for subscription in (SAMPLE_SUBSCRIPTION, blank):
            context = _context(SAMPLE_CUSTOMER, organization, subscription, lead, lead)
            context[probe.ISOLATE] = probe.isolate(budget_ms)
            try:
                with bounds.budget(budget_ms * SAVE_BUDGETS):
                    for _ in probes.generate(context):
                        pass
            except SecurityError as exc:
                raise TemplateRefused(f"template not allowed: {exc}") from None
