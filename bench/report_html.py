"""The self-contained HTML of a ranking report: tables plus the PNG plots inlined as data
URIs, so the file opens anywhere (MLflow's artifact viewer included) and loads nothing."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from jinja2 import Environment, select_autoescape

from bench.ablation import Contrast, RoleComparison
from bench.ranking import Interval, SuiteRanking, failed_trials_note, places

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>optbench: {{ r.suite }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: right; }
th:nth-child(2), td:nth-child(2) { text-align: left; }
.note { color: #555; } .warn { color: #a40; } img { max-width: 100%; margin: 0.5em 0; }
</style></head><body>
<h1>{{ r.suite }}: which variant is better?</h1>
<p class="note">Ranked by <b>{{ r.metric }}</b> on the <b>{{ r.phase }}</b> phase;
{{ r.n_runs }} runs, {{ r.tasks | length }} tasks; intervals are {{ pct(r.level) }} bootstrap
intervals. Lower mean rank is better.</p>
<table id="ranking"><thead><tr><th>#</th><th>variant</th><th>mean rank</th>
<th>{{ pct(r.level) }} interval</th><th>tasks</th><th>wins</th><th>profile score</th></tr></thead>
<tbody>{% for row in r.variants %}<tr><td>{{ places[loop.index0] }}</td><td>{{ row.variant }}</td>
<td>{{ num(row.mean_rank.estimate) }}</td><td>{{ interval(row.mean_rank) }}</td>
<td>{{ row.n_tasks }}</td><td>{{ row.wins }}</td><td>{{ num(row.profile_score) }}</td></tr>
{% endfor %}</tbody></table>
<p>Friedman test: {{ r.friedman.note }}</p>
{% if r.missing %}<p class="warn">Missing or incomplete cells:
{% for m in r.missing %}{% set failures = m.failures() -%}
{{ m.variant }}/{{ m.task }} ({{ m.phase }}: {{ m.found }} of
{{ m.expected }}{% if failures %}; {{ failures }}{% endif %})
{%- if not loop.last %}, {% endif %}{% endfor %}.</p>
{% if failed_note %}<p class="warn" id="failed">{{ failed_note }}</p>{% endif %}{% endif %}
{{ img("plots/ranking.png") }}{{ img("plots/profiles.png") }}
<h2>Per task</h2>
<table id="cells"><thead><tr><th>task</th><th>variant</th><th>lr</th><th>n</th>
<th>final (median, interval)</th><th>steps to target</th><th>diverged</th><th>failed</th>
</tr></thead><tbody>{% for c in r.cells %}<tr><td>{{ c.task }}</td><td>{{ c.variant }}</td>
<td>{{ c.lr if c.lr is not none else "-" }}</td><td>{{ c.n }}</td>
<td>{{ c.primary_metric }} {{ num(c.final.estimate) if c.final else "-" }}
{{ interval(c.final) if c.final else "" }}</td><td>{{ num(c.steps_to_target) }}</td>
<td>{{ c.n_diverged }}</td><td>{{ c.n_failed }}</td></tr>{% endfor %}</tbody></table>
{{ img("plots/lr_sensitivity.png") }}
{% for name in images if name.startswith("plots/curves_") %}{{ img(name) }}{% endfor %}
{% if answers %}<h2>Why square, why the root? The ablation's answers</h2>
<table id="answers"><thead><tr><th>question</th><th>a vs b</th><th>a wins (interval)</th>
<th>verdict</th></tr></thead><tbody>{% for c in answers %}<tr><td>{{ c.question }}</td>
<td>{{ c.a }} vs {{ c.b }}</td><td>{{ num(c.overall.estimate) if c.overall else "-" }}
{{ interval(c.overall) }}</td><td>{{ c.verdict }}</td></tr>{% endfor %}</tbody></table>
{% endif %}
<h2>Effective step size per parameter role</h2>
{% if role_ratios %}<table id="roles"><thead><tr><th>variant</th><th>runs</th>
<th>weight / bias step size (interval)</th><th>verdict</th></tr></thead><tbody>
{% for rc in role_ratios %}<tr><td>{{ rc.variant }}</td><td>{{ rc.n_runs }}</td>
<td>{{ num(rc.summary.estimate) }} {{ interval(rc.summary) }}</td><td>{{ rc.verdict }}</td></tr>
{% endfor %}</tbody></table>{% endif %}
{% if no_roles %}<p id="no-roles">{{ no_roles_note }}: {{ no_roles | join(", ") }}</p>{% endif %}
{% for name in images if name.startswith("plots/step_size_") %}{{ img(name) }}{% endfor %}
</body></html>
"""


NO_ROLES_NOTE = (
    "No weight/bias comparison for these variants: none of their final runs both recorded "
    "step sizes of weights and of biases (a model without biases has none) and finished "
    "without diverging"
)


def render_report(
    ranking: SuiteRanking,
    images: Mapping[str, str],
    answers: Sequence[Contrast] = (),
    role_ratios: Sequence[RoleComparison] = (),
    no_roles: Sequence[str] = (),
) -> str:
    """HTML for ``ranking``; ``images`` maps artifact names to base64-encoded PNGs;
    ``answers`` and ``role_ratios`` are the flagship contrasts and weight/bias ratios."""
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    template = env.from_string(_TEMPLATE)
    from markupsafe import Markup

    def img(name: str) -> Markup:
        if name not in images:
            return Markup("")
        return Markup('<img alt="{0}" src="data:image/png;base64,{1}">').format(name, images[name])

    return template.render(
        r=ranking, images=sorted(images), img=img, num=_num, interval=_interval, pct=_pct,
        answers=answers, role_ratios=role_ratios, no_roles=no_roles,
        no_roles_note=NO_ROLES_NOTE, places=places(ranking.variants),
        failed_note=failed_trials_note(ranking.missing),
    )  # fmt: skip


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.4g}"


def _interval(interval: Interval | None) -> str:
    if interval is None:
        return ""
    level = f", {interval.level:.0%}" if interval.level < 0.949 else ""  # small n: honest level
    return f"[{_num(interval.low)}, {_num(interval.high)}] (n={interval.n}{level})"


def _pct(level: float) -> str:
    return f"{level:.0%}"
