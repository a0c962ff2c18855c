"""Templates are untrusted code: sandboxed, strict, size-capped, checked when saved."""

from __future__ import annotations

import pytest

from app.domain.templates import (
    DEFAULT_TEMPLATE,
    TemplateProblem,
    compile_template,
    sample_render,
    validate_template,
)


def _save(source: str, max_segments: int = 3) -> None:
    validate_template(
        source, organization_name="Acme", lead_days=[5, 3, 1], max_segments=max_segments
    )


def test_default_template_renders_the_real_days_left() -> None:
    p = sample_render(DEFAULT_TEMPLATE, organization_name="Acme", lead_days=3)
    assert "in 3 days" in p.body and "Acme" in p.body and "Alex Example" in p.body
    one = sample_render(DEFAULT_TEMPLATE, organization_name="Acme", lead_days=1)
    assert "tomorrow" in one.body
    assert p.segments.encoding == "GSM-7"


def test_all_documented_variables_are_available() -> None:
    src = (
        "{{ customer.name }} {{ organization.name }} {{ subscription.plan }} "
        "{{ subscription.expires_on.strftime('%d %b') }} {{ subscription.amount }} "
        "{{ subscription.currency }} {{ days_left }} {{ lead_days }}"
    )
    body = sample_render(src, organization_name="Acme", lead_days=5).body
    assert body == "Alex Example Acme Fiber 500 15 Jan 49.90 USD 5 5"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("Hi {{ customer.name ", "syntax error"),
        ("{% if days_left %}open", "syntax error"),
        ("Hi {{ name }}", "unknown variable name"),
        ("Hi {{ customer.nmae }}", "nmae"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "not allowed"),
        ("{{ customer.__init__.__globals__ }}", "not allowed"),
        ("{{ range.__self__ }}", ""),
        ("{% for i in range(1000000) %}x{% endfor %}", "not allowed"),
        ("{{ 'x' * 100000 }}", "not allowed"),
        ("{{ 9 ** 9999999 }}", "not allowed"),
        (
            "{% for i in range(99) %}{% for j in range(99) %}{% for k in range(99) %}"
            "{% endfor %}{% endfor %}{% endfor %}",
            "nested",
        ),
        ("{% for i in range(99) %}{{ customer.name * 20 }}{% endfor %}", "longer than 1600"),
        ("{{ '' }}", "empty"),
        ("{{ lipsum() }}", "unknown variable lipsum"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "not allowed"),
        ("{% set a = 'x' * 1000 %}{{ a }}", "not allowed"),
        (
            "{{ 'x' | replace('x', 'xxxxxxxxxx') | replace('x', 'xxxxxxxxxx') }}",
            "No filter named 'replace'",
        ),
        ("{{ 'x'.ljust(10 ** 9) }}", "not allowed"),
        ("{{ '{:>99999999}'.format('x') }}", "not allowed"),
        ("{{ '%99999999s' % 'x' }}", "not allowed"),
        ("{{ customer.name + 'y' * 1599 }}", "not allowed"),
    ],
)
def test_broken_and_hostile_templates_are_refused_with_a_reason(source: str, reason: str) -> None:
    with pytest.raises(TemplateProblem) as info:
        _save(source)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_too_many_segments_names_the_characters_that_forced_ucs2() -> None:
    with pytest.raises(TemplateProblem, match="UCS-2 forced by '🎉'"):
        _save("🎉 " + "Your plan expires soon, please renew. " * 6, max_segments=3)


def test_compiled_templates_are_cached() -> None:
    assert compile_template("Hi {{ customer.name }}") is compile_template("Hi {{ customer.name }}")
