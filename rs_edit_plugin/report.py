"""What the backend says about a finished job, for people: its warnings and key figures.

A job's JSON (`GET /v1/jobs/{id}`) carries `report` once it succeeded (the editor's figures:
CLIP model and whether its weights were random, where the prompts came from, CLIP similarity
before and after, seconds per stage, ...) and may carry a `warnings` list (at the top level or
in the report). Warnings are also derived from the report where the backend only states a
fact: random CLIP weights, prompts from templates because the LLM was not available.
"""

import json


def job_report(job: dict) -> dict:
    value = (job or {}).get("report")
    return dict(value) if isinstance(value, dict) else {}


def _texts(value) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list | tuple):
        return [str(v.get("message", v) if isinstance(v, dict) else v) for v in value if v]
    return []


def job_warnings(job: dict) -> list[str]:
    """The warnings a person should see about this result (no duplicates, in order)."""
    job = job or {}
    found = _texts(job.get("warnings"))
    rep = job_report(job)
    found += _texts(rep.get("warnings"))
    if rep.get("clip_random") is True:
        found.append(
            f"CLIP {rep.get('clip') or ''} ran with random weights (none on the backend): "
            "the edit does not follow the prompt".replace("CLIP  ", "CLIP ")
        )
    note = str(rep.get("prompt_note") or "")
    if rep.get("prompt_source") == "templates" and note and not note.startswith("using the"):
        found.append(f"prompts: {note}")  # the LLM was asked for but not used
    unique = []
    for text in found:
        if text not in unique:
            unique.append(text)
    return unique


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
        return ", ".join(_number(float(v)) for v in value)
    return str(value)


KEY_FIGURES = (
    ("clip", "CLIP"),
    ("preset", "preset"),
    ("device", "device"),
    ("prompt_source", "prompts from"),
    ("clip_similarity_input", "CLIP similarity before"),
    ("clip_similarity_edits", "CLIP similarity after"),
    ("realism_replaced", "replaced by the realism guard"),
    ("model_cached", "cached model"),
    ("job_seconds", "seconds"),
)


def key_figures(rep: dict) -> list[str]:
    """ "label: value" lines for the figures a person looks at first."""
    lines = []
    for key, label in KEY_FIGURES:
        if key in rep and rep[key] not in (None, "", []):
            lines.append(f"{label}: {_number(rep[key])}")
    return lines


def details_text(record) -> str:
    """Everything about a job: what it was, its end, warnings, key figures, the full report."""
    lines = [record.title]
    if record.job_id:
        lines.append(f"backend job {record.job_id}")
    lines.append(f"state: {record.state}" + (f" ({record.message})" if record.message else ""))
    if record.warnings:
        lines += ["", "Warnings:"] + [f"• {w}" for w in record.warnings]
    if record.report:
        lines += ["", "Key figures:"] + key_figures(record.report)
        lines += ["", "Full report:", json.dumps(record.report, indent=2, sort_keys=True)]
    return "\n".join(lines)
