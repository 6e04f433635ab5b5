"""A drill's report: the same document as JSON (for CI) and Markdown (for people)."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any


def _iso(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="milliseconds")


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}s"


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# Drill report: {doc['name']} — {str(doc['verdict']).upper()}",
        "",
        f"- drill: {doc['drill']} (recorded in the event log of `{doc['state_dir']}`, "
        f"events #{doc['log_positions'][0]}..#{doc['log_positions'][1]})",
        f"- file: `{doc['file']}`",
        f"- started: {_iso(doc['started_at'])}, finished: {_iso(doc['finished_at'])}",
        f"- blast radius: {', '.join(doc['blast_radius'])}",
        f"- incidents during the drill: {', '.join(map(str, doc['incidents'])) or 'none'}",
    ]
    if doc.get("description"):
        lines += ["", str(doc["description"]).strip()]
    if doc["reasons"]:
        lines += ["", "## Why it did not pass", ""] + [f"- {r}" for r in doc["reasons"]]
    lines += [
        "",
        "## Faults",
        "",
        "| # | fault | target | status | detected | recovered | RTO | daemon RTO | RPO | actions "
        "| incident |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in doc["faults"]:
        status = f["status"] + (f": {f['skipped_reason']}" if f.get("skipped_reason") else "")
        status += f": {f['error']}" if f.get("error") else ""
        lines.append(
            f"| {f['index']} | {f['kind']} | {f['target'] or '-'} | {status} | {_s(f['detection_s'])} "
            f"| {_s(f['recovery_s'])} | {_s(f['rto_s'])} | {_s(f.get('daemon_rto_s'))} "
            f"| {_s(f.get('rpo_s'))} | {', '.join(f['actions']) or '-'} "
            f"| {f['incident'] or '-'} |"
        )
    lines += [
        "",
        "Detection and recovery are measured from the moment the fault was injected; the daemon's "
        "RTO from detection to verified health, the RPO as the age of the checkpoint it restored.",
        "",
    ]
    lines += ["## Criteria", "", "| criterion | result | detail |", "|---|---|---|"]
    for c in doc["criteria"]:
        result = {True: "pass", False: "FAIL", None: "n/a"}[c["passed"]]
        lines.append(f"| {c['criterion']} | {result} | {c['detail']} |")
    lines += ["", "## Reverts", ""]
    for f in doc["faults"]:
        if f["reverted"] is not None:
            lines.append(f"- fault {f['index']} ({f['kind']}): {f['reverted']}")
    return "\n".join(lines) + "\n"


def write_report(doc: dict[str, Any], report_dir: Path) -> tuple[Path, Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.fromtimestamp(doc["started_at"] or 0, tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = report_dir / f"{doc['name']}-{doc['drill']}-{stamp}"
    md, js = base.with_name(base.name + ".md"), base.with_name(base.name + ".json")
    for path, text in ((md, markdown(doc)), (js, json.dumps(doc, indent=2, default=str) + "\n")):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return md, js
