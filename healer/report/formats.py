"""Renderings of a postmortem document: JSON, Markdown (ready to paste into a ticket), HTML.

The HTML report is one self-contained file: inline CSS, an inline SVG chart, no script and a
Content-Security-Policy that forbids loading anything, so it opens offline and cannot call out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from healer.report.svg import timeline_svg

FORMATS = ("md", "json", "html")


def render(doc: Mapping[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
    if fmt == "md":
        return to_markdown(doc)
    if fmt == "html":
        return to_html(doc)
    raise ValueError(f"unknown format {fmt!r} (use one of {', '.join(FORMATS)})")


# -- shared wording ------------------------------------------------------------------------------
def title(doc: Mapping[str, Any]) -> str:
    return f"Incident {doc['incident']} — {doc['component']}: {doc['failure_class']} ({doc['status']})"


def objective_text(o: Mapping[str, Any]) -> str:
    target = f"target {o['target_s']:g} s" if o.get("target_s") is not None else "no target set"
    if o.get("achieved_s") is None:
        return f"not measured ({o.get('note') or 'no data'}); {target}"
    verdict = {True: ": met", False: ": MISSED", None: ""}[o.get("met")]
    return f"{o['achieved_s']:.2f} s achieved, {target}{verdict}"


def facts(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    decision = next((d for d in doc["decisions"] if d.get("policy")), None)
    policy = (
        f"{decision['policy']} ({decision['policy_file']}, sha256:{decision['policy_hash']})"
        if decision
        else "none matched"
    )
    closed = doc["closed_at"] or "still open"
    if doc.get("resolution"):
        closed += f" ({doc['resolution']})"
    desc = f" — {doc['description']}" if doc.get("description") else ""
    return [
        ("Detected", str(doc["detected_at"])),
        ("Closed", closed),
        ("Failure class", f"{doc['failure_class']}{desc}"),
        ("Root cause", str(doc["root_cause"])),
        ("Symptoms", ", ".join(doc["symptoms"]) or "none"),
        ("RTO", objective_text(doc["objectives"]["rto"])),
        ("RPO", objective_text(doc["objectives"]["rpo"])),
        ("Policy", policy),
    ]


def guardrail_lines(doc: Mapping[str, Any]) -> list[str]:
    g = doc["guardrails"]
    lines = []
    for step, used in g["attempts_by_step"].items():
        limit = next(
            (
                d["max_attempts"]
                for d in doc["decisions"]
                if str(d.get("step")) == step and d.get("max_attempts")
            ),
            None,
        )
        lines.append(f"step {step}: {used} attempt(s) used" + (f" of {limit}" if limit else ""))
    for c in g["cooldowns"]:
        if c["waited_s"]:
            lines.append(
                f"attempt {c['attempt']}/{c['max_attempts']} waited {c['waited_s']:.2f} s "
                f"for its cooldown ({c['cooldown_s']:g} s)"
            )
    for b in g["blocks"]:
        lines.append(f"#{b['position']} +{b['t']:.3f} s {b['type']}: {b['text']}")
    if g["escalation"]:
        lines.append(f"escalated: {g['escalation']}")
    return lines or ["no guardrail limited this incident"]


# -- Markdown ------------------------------------------------------------------------------------
def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return out


def to_markdown(doc: Mapping[str, Any]) -> str:
    lines = [f"# {title(doc)}", "", f"**Summary.** {doc['summary']}", ""]
    lines += _table(["", ""], facts(doc))
    lines += ["", "## Timeline", "", "Times are relative to detection (t = 0).", ""]
    lines += _table(
        ["t (s)", "time (UTC)", "#", "event", "what happened"],
        [
            [f"{e['t']:+.3f}", str(e["at"])[11:23], e["position"], e["type"], e["text"]]
            for e in doc["timeline"]
        ],
    )
    lines += ["", "## Root cause and symptoms", ""]
    lines.append(f"- Root cause: **{doc['root_cause']}** ({doc['failure_class']})")
    lines.append(f"- Symptoms: {', '.join(doc['symptoms']) or 'none'}")
    if doc["evidence"]:
        lines.append("- Evidence:")
        for k, v in doc["evidence"].items():
            lines.append(f"  - `{k}`: `{json.dumps(v, sort_keys=True, default=str)}`")
    lines += ["", "## Actions and outcomes", ""]
    if doc["actions"]:
        lines += _table(
            ["step", "attempt", "action", "idempotency key", "started (s)", "took (s)", "outcome"],
            [
                [
                    a["step"],
                    a["attempt"],
                    f"{a['actuator']}.{a['action']}",
                    a["idempotency_key"],
                    f"{a['started']:+.3f}",
                    f"{a['duration_s']:.3f}" if a["duration_s"] is not None else "—",
                    a["outcome"] + (f": {a['error']}" if a["error"] else ""),
                ]
                for a in doc["actions"]
            ],
        )
    else:
        lines.append("No action was taken.")
    lines += ["", "## Decisions", ""]
    for d in doc["decisions"]:
        lines.append(
            f"- #{d['position']} +{d['t']:.3f} s: **{d['decision']}**"
            + (f" attempt {d['attempt']}/{d['max_attempts']}" if d.get("attempt") else "")
            + (
                f", policy `{d['policy']}` step {d['step']} (sha256:{d['policy_hash']})"
                if d.get("policy")
                else ""
            )
            + (f" — {d['reason']}" if d.get("reason") else "")
        )
        for r in d["rejected"]:
            lines.append(f"  - rejected `{r.get('policy')}`: {r.get('reason')}")
    if not doc["decisions"]:
        lines.append("No remediation decision was made.")
    lines += ["", "## Compensations", ""]
    lines += [
        f"- #{c['position']} +{c['t']:.3f} s {c['type']}: {c['text']}" for c in doc["compensations"]
    ] or ["None recorded."]
    if doc.get("recovery"):
        lines += ["", "## Disaster recovery", ""]
        lines += [f"- #{c['position']} +{c['t']:.3f} s {c['type']}: {c['text']}" for c in doc["recovery"]]
        if doc.get("effects_undone"):
            lines.append(f"- Side effects undone: {', '.join(doc['effects_undone'])}")
        for m in doc.get("model_lineage") or []:
            why = m.get("why") or {}
            lines.append(
                f"- Model lineage: `{m.get('link')}` {m.get('from')} → {m.get('to')}, because "
                f"{why.get('failure_class')} on {why.get('component')} "
                f"(incident {why.get('incident')}, policy `{why.get('policy')}`)"
            )
    lines += ["", "## Approvals", ""]
    lines += [
        f"- #{a['position']} {a['when']} {a['type']}"
        + (f" by {a['who']}" if a["who"] else "")
        + f": {a['text']}"
        for a in doc["approvals"]
    ] or ["None requested."]
    lines += ["", "## Guardrails", ""]
    lines += [f"- {line}" for line in guardrail_lines(doc)]
    lines += ["", f"_Written by healer from the event log (schema {doc['schema']})._", ""]
    return "\n".join(lines)


# -- HTML ----------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1000px;color:#111827;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #e5e7eb}
table{border-collapse:collapse;width:100%;font-size:.9rem}
td,th{border:1px solid #e5e7eb;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f9fafb}.facts th{width:10rem}code{background:#f3f4f6;padding:0 .2rem}
.level-error td{color:#b91c1c}.level-warning td{color:#92400e}.summary{font-size:1.05rem}
.chart{overflow-x:auto}.muted{color:#6b7280}
"""


_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def _json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _h(text: Any) -> str:
    return escape(str(text), quote=True)


def _html_table(head: Sequence[str], rows: Sequence[Sequence[Any]], row_class: Sequence[str] = ()) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{_h(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{_h(row_class[i])}"' if i < len(row_class) else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _list(items: Sequence[str], empty: str) -> str:
    if not items:
        return f'<p class="muted">{_h(empty)}</p>'
    return "<ul>" + "".join(f"<li>{_h(i)}</li>" for i in items) + "</ul>"


def to_html(doc: Mapping[str, Any]) -> str:
    chart = timeline_svg(doc["phases"], doc["timeline"])
    facts_rows = "".join(f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in facts(doc))
    timeline = _html_table(
        ["t (s)", "time (UTC)", "#", "event", "what happened"],
        [
            [f"{e['t']:+.3f}", str(e["at"])[11:23], e["position"], e["type"], e["text"]]
            for e in doc["timeline"]
        ],
        [f"level-{e['level']}" for e in doc["timeline"]],
    )
    actions = (
        _html_table(
            ["step", "attempt", "action", "idempotency key", "started (s)", "took (s)", "outcome"],
            [
                [
                    a["step"],
                    a["attempt"],
                    f"{a['actuator']}.{a['action']}",
                    a["idempotency_key"],
                    f"{a['started']:+.3f}",
                    f"{a['duration_s']:.3f}" if a["duration_s"] is not None else "—",
                    a["outcome"] + (f": {a['error']}" if a["error"] else ""),
                ]
                for a in doc["actions"]
            ],
        )
        if doc["actions"]
        else '<p class="muted">No action was taken.</p>'
    )
    decisions = [
        f"#{d['position']} +{d['t']:.3f} s: {d['decision']}"
        + (f" attempt {d['attempt']}/{d['max_attempts']}" if d.get("attempt") else "")
        + (f", policy {d['policy']} step {d['step']} (sha256:{d['policy_hash']})" if d.get("policy") else "")
        + (f" — {d['reason']}" if d.get("reason") else "")
        + "".join(f"; rejected {r.get('policy')}: {r.get('reason')}" for r in d["rejected"])
        for d in doc["decisions"]
    ]
    evidence = "".join(
        f"<tr><th><code>{_h(k)}</code></th><td><code>{_h(_json(v))}</code></td></tr>"
        for k, v in doc["evidence"].items()
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing may be fetched: the report is one file and must open offline.
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{_h(title(doc))}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{_h(title(doc))}</h1>",
        f'<p class="summary">{_h(doc["summary"])}</p>',
        f'<table class="facts">{facts_rows}</table>',
        "<h2>Timeline</h2>",
        '<p class="muted">Phases of the incident and health of each component; t = 0 is detection.</p>',
        f'<div class="chart">{chart}</div>',
        timeline,
        "<h2>Root cause and symptoms</h2>",
        f"<p>Root cause: <strong>{_h(doc['root_cause'])}</strong> ({_h(doc['failure_class'])}); "
        f"symptoms: {_h(', '.join(doc['symptoms']) or 'none')}.</p>",
        f"<table>{evidence}</table>" if evidence else "",
        "<h2>Actions and outcomes</h2>",
        actions,
        "<h2>Decisions</h2>",
        _list(decisions, "No remediation decision was made."),
        "<h2>Compensations</h2>",
        _list(
            [f"#{c['position']} +{c['t']:.3f} s {c['type']}: {c['text']}" for c in doc["compensations"]],
            "None recorded.",
        ),
        "<h2>Disaster recovery</h2>" if doc.get("recovery") else "",
        _list(
            [f"#{c['position']} +{c['t']:.3f} s {c['type']}: {c['text']}" for c in doc["recovery"]],
            "",
        )
        if doc.get("recovery")
        else "",
        "<h2>Approvals</h2>",
        _list(
            [
                f"#{a['position']} {a['when']} {a['type']}"
                + (f" by {a['who']}" if a["who"] else "")
                + f": {a['text']}"
                for a in doc["approvals"]
            ],
            "None requested.",
        ),
        "<h2>Guardrails</h2>",
        _list(guardrail_lines(doc), ""),
        f'<p class="muted">Written by healer from the event log (schema {_h(doc["schema"])}).</p>',
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
