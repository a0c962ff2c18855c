"""Templates are untrusted code: sandboxed, strict, size-capped, checked when saved."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.domain.templates import (
    DEFAULT_TEMPLATE,
    SAMPLE_CUSTOMER,
    SAMPLE_SUBSCRIPTION,
    CustomerVars,
    OrganizationVars,
    SubscriptionVars,
    TemplateProblem,
    compile_template,
    render,
    render_or_default,
    sample_render,
    validate_template,
)

UNGUARDED = "Amount due: {{ subscription.amount }} {{ subscription.currency }}."
NO_AMOUNT = replace(SAMPLE_SUBSCRIPTION, amount=None)


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


def _render(source: str, subscription: SubscriptionVars = SAMPLE_SUBSCRIPTION) -> str:
    return render(
        source,
        customer=SAMPLE_CUSTOMER,
        organization=OrganizationVars(name="Acme"),
        subscription=subscription,
        days_left=3,
        lead_days=3,
    )


def test_printing_none_is_refused_at_render_time() -> None:
    with pytest.raises(TemplateProblem) as info:
        _render(UNGUARDED, NO_AMOUNT)

    assert str(info.value) == (
        "template failed to render: a value printed by the template is empty (None)"
    )
    assert _render(UNGUARDED) == "Amount due: 49.90 USD."


def test_printing_an_empty_string_is_allowed() -> None:
    blank = replace(SAMPLE_SUBSCRIPTION, currency="")

    assert _render("Due: {{ subscription.amount }}{{ subscription.currency }}", blank) == (
        "Due: 49.90"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            UNGUARDED,
            "template prints subscription.amount, which is empty for some customers; "
            "guard it: {% if subscription.amount %}…{% endif %}",
        ),
        (
            # An import can bring an amount without a currency.
            "Hi.{% if subscription.amount %} Due: {{ subscription.amount }} "
            "{{ subscription.currency }}{% endif %}",
            "template prints subscription.currency, which is empty for some customers; "
            "guard it: {% if subscription.currency %}…{% endif %}",
        ),
        (
            "Hi {{ subscription.amount or subscription.currency }}",
            "template prints subscription.amount and subscription.currency, which are empty "
            "for some customers; guard them: "
            "{% if subscription.amount and subscription.currency %}…{% endif %}",
        ),
        (
            "{% if subscription.amount %}{{ subscription.amount }}{% endif %}",
            "rendered text is empty for customers without subscription.amount",
        ),
    ],
)
def test_save_renders_every_combination_of_optional_fields(source: str, message: str) -> None:
    with pytest.raises(TemplateProblem) as info:
        _save(source)

    assert str(info.value) == message


def test_guarded_optional_fields_and_the_default_pass_every_combination() -> None:
    guarded = (
        "Hi {{ customer.name }}.{% if subscription.amount and subscription.currency %} "
        "Amount due: {{ subscription.amount }} {{ subscription.currency }}.{% endif %}"
    )
    previews = validate_template(
        guarded, organization_name="Acme", lead_days=[5, 1], max_segments=3
    )

    assert [p.body for p in previews] == ["Hi Alex Example. Amount due: 49.90 USD."] * 2
    _save(DEFAULT_TEMPLATE)


def test_render_or_default_falls_back_to_the_default_with_the_problem() -> None:
    body, problem = render_or_default(
        UNGUARDED,
        customer=CustomerVars(name="Ada"),
        organization=OrganizationVars(name="Acme"),
        subscription=NO_AMOUNT,
        days_left=3,
        lead_days=3,
    )

    assert body.startswith("Hi Ada, your Acme Fiber 500 plan expires in 3 days")
    assert problem == ("template failed to render: a value printed by the template is empty (None)")


def test_render_or_default_keeps_a_template_that_renders() -> None:
    result = render_or_default(
        UNGUARDED,
        customer=SAMPLE_CUSTOMER,
        organization=OrganizationVars(name="Acme"),
        subscription=SAMPLE_SUBSCRIPTION,
        days_left=3,
        lead_days=3,
    )

    assert result == ("Amount due: 49.90 USD.", None)


def test_render_or_default_raises_when_the_default_itself_fails() -> None:
    nameless = CustomerVars(name=None)  # type: ignore[arg-type]  # a corrupt row

    with pytest.raises(TemplateProblem, match=r"empty \(None\)"):
        render_or_default(
            DEFAULT_TEMPLATE,
            customer=nameless,
            organization=OrganizationVars(name="Acme"),
            subscription=SAMPLE_SUBSCRIPTION,
            days_left=3,
            lead_days=3,
        )
