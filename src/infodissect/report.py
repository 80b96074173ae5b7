"""The HTML report: every figure with its caption, a table of the key numbers per model, and the factor
visibility table (pixel MI and classifier accuracy per factor) in its section.

The captions are the reStructuredText files the rules also give Snakemake's
``report()`` (workflow/report/*.rst), so ``snakemake --report`` and this report say
the same. Figures are embedded (base64), so the HTML file stands alone.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .stages import STAGES
from .store import open_dataset, write_text


def caption_text(path: str | Path, wildcards: dict[str, str]) -> str:
    """A caption file's text with ``{{ snakemake.wildcards.X }}`` filled in and rST literals unquoted."""
    text = Path(path).read_text()
    text = re.sub(r"\{\{\s*snakemake\.wildcards\.(\w+)\s*\}\}", lambda m: wildcards.get(m.group(1), m.group(0)), text)
    return text.replace("``", "").strip()


def key_numbers(model: str, inputs: dict[str, str]) -> dict[str, Any]:
    """A model's key numbers: test-set and held-out accuracy, then those of each analysis stage whose store
    ``inputs`` names (keyed by stage name: the profile's identity peak, the generalisation gap, pose invariance)."""
    row: dict[str, Any] = {"model": model}
    if "metrics" in inputs:
        m = pd.read_csv(inputs["metrics"])
        row["test-set accuracy (training identities)"] = f"{100 * float(m['test_accuracy'].iloc[-1]):.1f}%"
    if "heldout" in inputs:
        h = json.loads(Path(inputs["heldout"]).read_text())
        row["accuracy on held-out identities"] = (
            f"{100 * h['accuracy']:.1f}% (chance {100 * h['chance']:.1f}%; {h['identities']} people, {h['n']} images "
            f"of set {h['set']})")
    for name, path in inputs.items():  # the analysis stages' own key numbers (the stage table)
        row.update(stage_numbers(name, path))
    return row


def stage_numbers(name: str, path: str) -> dict[str, Any]:
    """The key numbers stage ``name`` gives of its finished store ``path`` (none if it gives none)."""
    if name not in STAGES:
        return {}
    fn = getattr(STAGES[name].load(), STAGES[name].numbers, None)
    return fn(path) if fn is not None else {}


def stage_tables_html(inputs: dict[str, str]) -> list[str]:
    """HTML of the tables the analysis stages whose stores ``inputs`` names give (their ``report_tables``, which
    also see the model's other inputs)."""
    out = []
    for name, path in inputs.items():
        module = STAGES[name].load() if name in STAGES else None
        for title, table in getattr(module, "report_tables", lambda p, i: [])(path, inputs):
            out.append(f"<h3>{html.escape(title)}</h3>" + table.to_html(escape=True))
    return out


def _percent(value: float) -> str:
    return "" if not np.isfinite(value) else f"{100 * value:.1f}%"


def _classifier_cell(m: xr.Dataset) -> str:
    """One classifier's accuracy, chance and where it was measured (with its test-set accuracy when held out)."""
    where = str(m["evaluated_on"].values)
    text = f"{m['model'].values}: {_percent(float(m['accuracy']))} ({_percent(float(m['chance']))}) on {where}"
    if "held-out" in where:
        text += f"; {_percent(float(m['test_accuracy']))} on the test set (training identities)"
    return text


def visibility_rows(ds: xr.Dataset) -> pd.DataFrame:
    """The factor visibility table: one row per factor (and per classifier task whose pixels were not measured)
    with its pixel MI, threshold, share of pixels above it and the accuracy of each classifier of that factor."""
    factors = [str(f) for f in ds["factor"].values]
    tasks = [str(t) for t in ds["task"].values]
    rows = []
    for name in factors + [t for t in dict.fromkeys(tasks) if t not in factors]:
        row: dict[str, Any] = {"factor": name}
        if name in factors:
            f = ds.sel(factor=name)
            row["kind"] = str(f["factor_kind"].values)
            row["given"] = str(f["given"].values) if "given" in f.coords else ""
            row["max pixel MI (bits)"] = f"{float(f['max_mi']):.3f}"
            row["threshold (bits)"] = f"{float(f['threshold']):.3f}" if np.isfinite(float(f["threshold"])) else ""
            row["pixels above threshold"] = _percent(float(f["share_significant"]))
        else:
            row["max pixel MI (bits)"] = "not measured"
        row["classifier accuracy (chance)"] = "; ".join(
            _classifier_cell(ds.isel(model=i)) for i, t in enumerate(tasks) if t == name)
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def _visibility_html(path: str | Path) -> str:
    ds = open_dataset(path, what="visibility store").load()
    table = visibility_rows(ds).to_html(index=False, escape=True)
    parts = []
    if ds["factor"].size:
        share = ds["share_significant"].values
        invisible = [str(f) for f, v in zip(ds["factor"].values, share) if not v > 0]
        parts.append(f"<p>Pixel MI on the {html.escape(str(ds.attrs.get('set', '')))} set "
                     f"({ds.attrs.get('n_samples', '?')} images, {ds.attrs.get('n_perm', '?')} permutations, "
                     f"family-wise alpha {ds.attrs.get('alpha', '?')}). Factors with no pixel above the threshold: "
                     f"<b>{html.escape(', '.join(invisible) or 'none')}</b>. A factor with a <i>given</i> "
                     "factor is measured within each level of that factor: I(pixel; factor | given) "
                     "(config <code>mi.given</code>).</p>")
    return "".join(parts) + table


def _figure_html(fig: dict[str, Any]) -> str:
    path = Path(fig["path"])
    data = base64.b64encode(path.read_bytes()).decode()
    caption = caption_text(fig["caption"], fig.get("wildcards", {})) if fig.get("caption") else ""
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
            f"<figcaption><b>{html.escape(path.name)}</b>: {html.escape(caption)}</figcaption></figure>")


_STYLE = """body{font-family:sans-serif;max-width:1400px;margin:2em auto;color:#222}
img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}figcaption{font-size:0.9em;color:#444;max-width:70em}
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:4px 8px;text-align:left}th{background:#eee}"""


def build_report(spec: dict[str, Any], out: str | Path) -> Path:
    """Write the report described by ``spec`` (title, intro, models' inputs, sections of figures) to ``out``."""
    missing = [f["path"] for s in spec["sections"] for f in s["figures"] if not Path(f["path"]).exists()]
    missing += [s["visibility"] for s in spec["sections"] if s.get("visibility") and not Path(s["visibility"]).exists()]
    missing += [p for s in spec["sections"] for p in s.get("stores", {}).values() if not Path(p).exists()]
    missing += [p for m in spec.get("models", {}).values() for p in m.values() if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"report inputs missing: {missing}")
    rows = [key_numbers(name, inputs) for name, inputs in spec.get("models", {}).items()]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(spec['title'])}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(spec['title'])}</h1>"]
    if spec.get("intro"):
        parts.append(f"<p>{html.escape(spec['intro'])}</p>")
    if rows:
        parts.append("<h2>Key numbers</h2>")
        parts.append(pd.DataFrame(rows).set_index("model").T.fillna("").to_html(escape=True))
    for section in spec["sections"]:
        parts.append(f"<h2>{html.escape(section['title'])}</h2>")
        parts.extend(_figure_html(f) for f in section["figures"])
        if section.get("visibility"):
            parts.append(_visibility_html(section["visibility"]))
        numbers = {k: v for name, path in section.get("stores", {}).items() for k, v in stage_numbers(name, path).items()}
        if numbers:
            parts.append(pd.DataFrame({"value": numbers}).to_html(escape=True))
        parts.extend(stage_tables_html(spec.get("models", {}).get(section.get("model", ""), {})))
    parts.append("</body></html>")
    return write_text(out, "\n".join(parts))
