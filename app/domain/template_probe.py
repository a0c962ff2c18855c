"""What a save checks beyond the sample texts: every branch of the template, not just the ones
the sample customer takes.

A bomb behind ``{% if customer.name != 'Alex Example' %}`` renders nothing for the sample, so a
save that only renders the sample stores it, and it freezes a worker for every real customer.
Deciding statically what every expression may cost is out of reach in general, so the save
*runs* every one: the probe template made here evaluates each expression and iterates each loop
of the template whatever the branches around it decide, each inside its enclosing loops (so loop
variables are bound and iteration counts multiply as they would) and each in isolation, under
the same bounds as a real render. An ordinary error in a probe (``None * 2`` for a customer
without an amount) is that branch's own business and ignored; a bound hit refuses the template,
naming its line.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError

from app.domain.template_bounds import MAX_INT_BITS, MAX_INT_DIGITS, BoundExceeded, budget

ISOLATE = "_isolate"


def static_problem(ast: nodes.Template) -> str | None:
    """A bound the template's text alone shows it can break, or None."""
    for loop in ast.find_all(nodes.For):
        if loop.recursive:
            return f"line {loop.lineno}: recursive loops are not allowed in templates"
    for const in ast.find_all(nodes.Const):
        value = const.value
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            return f"line {const.lineno}: numbers over {MAX_INT_DIGITS} digits are not allowed"
    return None


class _Probes:
    def __init__(self) -> None:
        self.macros: list[nodes.Node] = []
        self.calls: list[nodes.Node] = []

    def add(self, loops: Sequence[nodes.For], body: list[nodes.Node], lineno: int) -> None:
        for loop in reversed(loops):  # the enclosing loops, innermost first
            body = [
                nodes.For(
                    copy.deepcopy(loop.target),
                    copy.deepcopy(loop.iter),
                    body,
                    [],
                    copy.deepcopy(loop.test),
                    False,
                    lineno=loop.lineno,
                )
            ]
        name = f"_probe{len(self.macros)}"
        self.macros.append(nodes.Macro(name, [], [], body, lineno=lineno))
        isolate = nodes.Call(
            nodes.Name(ISOLATE, "load"),
            [nodes.Name(name, "load"), nodes.Const(lineno)],
            [],
            None,
            None,
            lineno=lineno,
        )
        self.calls.append(nodes.Output([isolate], lineno=lineno))

    def expression(self, loops: Sequence[nodes.For], expr: nodes.Node) -> None:
        self.add(loops, [nodes.If(copy.deepcopy(expr), [], [], [])], expr.lineno)

    def visit(self, body: Sequence[nodes.Node], loops: list[nodes.For]) -> None:
        for node in body:
            if isinstance(node, nodes.Output):
                for expr in node.nodes:
                    if not isinstance(expr, nodes.TemplateData):
                        self.expression(loops, expr)
            elif isinstance(node, nodes.If):
                self.expression(loops, node.test)
                self.visit(node.body, loops)
                for branch in node.elif_:
                    self.expression(loops, branch.test)
                    self.visit(branch.body, loops)
                self.visit(node.else_, loops)
            elif isinstance(node, nodes.For):
                self.add([*loops, node], [], node.lineno)  # the loop itself, empty body
                self.visit(node.body, [*loops, node])
                self.visit(node.else_, loops)


def probe_ast(ast: nodes.Template) -> nodes.Template:
    """A template that runs every expression and loop of ``ast`` in isolation (see above)."""
    probes = _Probes()
    probes.visit(ast.body, [])
    return nodes.Template([*probes.macros, *probes.calls])


def isolate(budget_ms: float) -> Callable[[Any, int], str]:
    """The probe template's ``_isolate``: run one probe under its own budget; a bound hit (or a
    sandbox refusal) is the template's fault, anything else is ignored."""

    def run(probe: Any, lineno: int) -> str:
        with budget(budget_ms):
            try:
                probe()
            except SecurityError as exc:
                raise BoundExceeded(f"line {lineno}: {exc}") from None
            except Exception:  # noqa: BLE001, S110 - an ordinary failure of one branch
                pass
        return ""

    return run
