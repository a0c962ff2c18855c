"""The hostile templates of issue 15, as reproduced on main before the render bounds: each
would hang a save or freeze a worker at send time."""

from __future__ import annotations

RECURSIVE = (
    "{% for i in range(100) recursive %}{% if loop.depth < 6 %}{{ loop(range(100)) }}"
    "{% endif %}{% endfor %}"
)
HIDDEN = "{% if customer.name != 'Alex Example' %}BOMB{% endif %}Hi {{ customer.name }}"
REPLACE_CHAIN = "{{ customer.name" + ".replace('', '0123456789')" * 6 + " }}"

# The cases of the issue, as reproduced on main before the bounds.
ISSUE_CASES = {
    "power tower": "{% if 99**99**99**99**99 > 0 %}ok{% endif %}",
    "recursive loop": RECURSIVE,
    "9**9**9": "{{ 9**9**9 }}",
    "hidden power tower": HIDDEN.replace("BOMB", "{% if 99**99**99**99**99 > 0 %}big{% endif %}"),
    "hidden recursive loop": HIDDEN.replace("BOMB", RECURSIVE),
    "hidden replace chain": HIDDEN.replace("BOMB", REPLACE_CHAIN),
}
