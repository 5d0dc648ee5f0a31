"""The electronic batch record (EBR): one HTML and one PDF document per batch.

Why: QA reviews a batch from one record that holds everything needed for the release
decision: recipe, materials, phases, CPP trends against their ranges, excursions,
deviations, CQAs against their specifications, the signatures (printed name, UTC date/time,
meaning, and whether each still verifies) and the audit excerpt. Charts are drawn directly
(inline SVG in HTML, fpdf2 lines in the PDF) so the record needs no plotting stack.

The content is gathered once (``collect``) and rendered twice, so HTML and PDF show the
same facts; ``content_hash`` (SHA-256 of the collected content) is printed on both.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from pharma_assets.lake.specs import CppSpec, load_spec
from pharma_assets.lake.storage import Lake

from .audit import AuditTrail, record_hash
from .deviations import list_deviations
from .release import batch_record, decisions
from .signatures import Signature, signatures_for, verify_signature

MAX_POINTS = 240


@dataclass
class Trend:
    tag: str
    uom: str
    points: list[tuple[float, float]]  # (elapsed hours, value)
    # per phase: (from hour, to hour, NOR, PAR) from the spec's phase limits
    bands: list[tuple[float, float, tuple[float, float] | None, tuple[float, float] | None]]


@dataclass
class EbrContent:
    batch_id: str
    header: dict[str, Any]
    materials: dict[str, Any]
    phases: list[dict[str, Any]]
    trends: list[Trend]
    excursions: list[dict[str, Any]]
    deviations: list[dict[str, Any]]
    cqas: list[dict[str, Any]]
    signatures: list[tuple[Signature, bool, str]]  # (signature, verifies, note)
    audit: list[dict[str, Any]]
    release: dict[str, Any] | None
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    content_hash: str = ""


def _rows(df: pl.DataFrame | None, batch_id: str) -> pl.DataFrame:
    if df is None or "batch_id" not in df.columns:
        return pl.DataFrame()
    return df.filter(pl.col("batch_id") == batch_id)


def collect(lake: Lake, batch_id: str, spec: CppSpec | None = None) -> EbrContent:
    """Gather the batch's record from silver, gold and the GxP tables."""
    import json

    spec = spec or load_spec()
    batches = _rows(lake.read("silver", "batches"), batch_id)
    if batches.height == 0:
        raise ValueError(f"batch {batch_id!r} is not in silver/batches; run the pipeline first")
    b = batches.row(0, named=True)
    header = {
        k: b[k]
        for k in (
            "batch_id",
            "site_id",
            "unit_id",
            "product",
            "recipe_id",
            "recipe_version",
            "start_ts",
            "end_ts",
            "status",
            "end_reason",
            "operator",
        )
    }
    header["spec_version"] = spec.version
    materials = json.loads(b["material_lots"]) if b.get("material_lots") else {}
    phases = _rows(lake.read("silver", "batch_phases"), batch_id).sort("start_ts").to_dicts()
    tl = _rows(lake.read("silver", "batch_timeline"), batch_id)
    trends = []
    if tl.height:
        last_min = int(tl["elapsed_min"].cast(pl.Int64).max() or 0)  # type: ignore[arg-type]
        step = max(1, last_min // MAX_POINTS)
        ds = (
            tl.with_columns(bucket=pl.col("elapsed_min") // step)
            .group_by("bucket")
            .agg(pl.col(t).mean() for t in spec.cpp_tags if t in tl.columns)
            .sort("bucket")
        )
        for t in spec.cpp_tags:
            if t not in ds.columns:
                continue
            pts = [
                (float(k * step / 60), float(v))
                for k, v in zip(ds["bucket"], ds[t], strict=True)
                if v is not None
            ]
            bands = []
            for ph in phases:
                if ph["start_ts"] is None or ph["end_ts"] is None:
                    continue
                lim = spec.tags[t].limits(ph["phase"])
                h0 = (ph["start_ts"] - b["start_ts"]).total_seconds() / 3600
                h1 = (ph["end_ts"] - b["start_ts"]).total_seconds() / 3600
                bands.append((h0, h1, lim.nor, lim.par))
            trends.append(Trend(t, spec.tags[t].uom, pts, bands))
    excursions = _rows(lake.read("gold", "cpp_excursions"), batch_id).sort("start_ts").to_dicts()
    devs = list_deviations(lake, batch_id=batch_id).to_dicts()
    labs = _rows(lake.read("silver", "lab_results"), batch_id)
    cqas = (
        labs.filter(pl.col("sample_type") == "release")
        .sort("analyte")
        .select("analyte", "value", "uom", "spec_lo", "spec_hi", "within_spec", "sample_ts")
        .to_dicts()
        if labs.height
        else []
    )
    sigs: list[tuple[Signature, bool, str]] = []
    dec = decisions(lake).filter(pl.col("batch_id") == batch_id)
    release = dec.row(0, named=True) if dec.height else None
    try:
        current_record = batch_record(lake, batch_id)
    except ValueError:
        current_record = None
    rel_sigs = signatures_for(lake, "batch_record", batch_id)  # reviews (`pharma-twin sign`)
    rel_sigs += signatures_for(lake, "batch_release", batch_id)
    for s in rel_sigs:
        chk = verify_signature(s, current_record or {})
        sigs.append((s, chk.ok, "; ".join(chk.problems) or "verifies against the current record"))
    dev_ids = [d["deviation_id"] for d in devs]
    for d in devs:
        for s in signatures_for(lake, "deviation", d["deviation_id"]):
            from .deviations import get_deviation

            chk = verify_signature(s, get_deviation(lake, d["deviation_id"]).signed_content())
            sigs.append((s, chk.ok, "; ".join(chk.problems) or "verifies"))
    audit = (
        AuditTrail(lake)
        .read(record_ids=[batch_id, *dev_ids])
        .select(
            "seq",
            "ts_utc",
            "actor",
            "action",
            "record_id",
            "field",
            "old_value",
            "new_value",
            "reason",
        )
        .to_dicts()
    )
    c = EbrContent(
        batch_id, header, materials, phases, trends, excursions, devs, cqas, sigs, audit, release
    )
    c.content_hash = record_hash(
        {
            "header": header,
            "materials": materials,
            "phases": phases,
            "excursions": excursions,
            "deviations": devs,
            "cqas": cqas,
            "trends": [(t.tag, t.points) for t in trends],
            "signatures": [s.signature_id for s, _, _ in sigs],
            "audit": [a["seq"] for a in audit],
        }
    )
    return c


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, datetime):
        return f"{v.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _spec_text(lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f"{lo:g} - {hi:g}"
    if lo is not None:
        return f">= {lo:g}"
    if hi is not None:
        return f"<= {hi:g}"
    return "-"


def _scale(t: Trend) -> tuple[float, float, float]:
    xs = [p[0] for p in t.points] or [0.0, 1.0]
    ys = [p[1] for p in t.points] + [v for *_, n, p in t.bands for r in (n, p) if r for v in r]
    y0, y1 = min(ys or [0.0]), max(ys or [1.0])
    if y1 == y0:
        y1 = y0 + 1
    return max(xs) or 1.0, y0, y1


# ---------------------------------------------------------------------------- HTML
def _svg(t: Trend, w: int = 560, h: int = 110) -> str:
    xmax, y0, y1 = _scale(t)

    def X(x: float) -> float:
        return 40 + (w - 50) * x / xmax

    def Y(y: float) -> float:
        return 8 + (h - 24) * (1 - (y - y0) / (y1 - y0))

    parts = [
        f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" '
        f'role="img" aria-label="{html.escape(t.tag)} trend">'
    ]
    for h0, h1, nor, par in t.bands:
        x0, x1 = X(max(0.0, h0)), X(min(xmax, h1))
        if nor:
            parts.append(
                f'<rect x="{x0:.1f}" y="{Y(nor[1]):.1f}" width="{x1 - x0:.1f}" '
                f'height="{Y(nor[0]) - Y(nor[1]):.1f}" fill="#e3f4e3"/>'
            )
        for v in par or ():
            parts.append(
                f'<line x1="{x0:.1f}" x2="{x1:.1f}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" '
                'stroke="#c0392b" stroke-dasharray="4 3"/>'
            )
    pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in t.points)
    parts.append(f'<polyline fill="none" stroke="#1f4e79" stroke-width="1.2" points="{pts}"/>')
    parts.append(
        f'<text x="2" y="14" font-size="10">{y1:.3g}</text>'
        f'<text x="2" y="{h - 16}" font-size="10">{y0:.3g}</text>'
        f'<text x="{w - 60}" y="{h - 3}" font-size="10">{xmax:.0f} h</text></svg>'
    )
    return "".join(parts)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(c: EbrContent) -> str:
    """The EBR as a self-contained HTML page."""
    e = html.escape
    sig_rows = (
        "".join(
            f"<li><strong>{e(s.manifestation())}</strong> - {e(s.record_type)} {e(s.record_id)}; "
            f"reason: {e(s.reason)}; record SHA-256 {e(s.record_hash[:16])}...; "
            f"<span class='{'ok' if ok else 'bad'}'>{e(note)}</span></li>"
            for s, ok, note in c.signatures
        )
        or "<li><em>no signatures yet</em></li>"
    )
    rel = (
        f"{c.release['decision'].upper()} by {c.release['printed_name']} on "
        f"{_fmt(c.release['decided_at'])}"
        if c.release
        else "PENDING QA REVIEW"
    )
    cqa = [
        {
            **q,
            "spec": _spec_text(q["spec_lo"], q["spec_hi"]),
            "result": "pass" if q["within_spec"] else "FAIL",
        }
        for q in c.cqas
    ]
    trends = "".join(
        f"<div class='trend'><h3>{e(t.tag)} [{e(t.uom)}]</h3>{_svg(t)}</div>" for t in c.trends
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Electronic batch record {e(c.batch_id)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;
margin:.5em 0}}td,th{{border:1px solid #bbb;padding:2px 6px;font-size:12px}}th{{background:#eee}}
.ok{{color:#1e7b34}}.bad{{color:#b00020;font-weight:bold}}.trend{{display:inline-block;margin:4px}}
</style></head><body>
<h1>Electronic batch record {e(c.batch_id)}</h1>
<p>Release status: <strong>{e(rel)}</strong></p>
<p>Generated {e(_fmt(c.generated_at))}; content SHA-256 <code>{e(c.content_hash)}</code></p>
<h2>1. Batch and recipe</h2>{_table([c.header], list(c.header))}
<h2>2. Materials</h2>{_table([c.materials], list(c.materials))}
<h2>3. Phases</h2>{_table(c.phases, ["phase", "start_ts", "end_ts"])}
<h2>4. CPP trends</h2><p>Normal operating range of each phase shaded green, proven
acceptable range dashed red; means against hours from inoculation.</p>{trends}
<h2>5. CPP excursions</h2>{
        _table(
            c.excursions,
            [
                "excursion_id",
                "tag",
                "phase",
                "start_ts",
                "duration_min",
                "minutes_outside_par",
                "peak_value",
                "severity",
            ],
        )
    }
<h2>6. Deviations</h2>{
        _table(
            c.deviations,
            ["deviation_id", "severity", "title", "state", "root_cause", "capa", "signature_id"],
        )
    }
<h2>7. Critical quality attributes</h2>{_table(cqa, ["analyte", "value", "uom", "spec", "result"])}
<h2>8. Electronic signatures</h2><ul>{sig_rows}</ul>
<h2>9. Audit trail excerpt</h2>{
        _table(
            c.audit,
            [
                "seq",
                "ts_utc",
                "actor",
                "action",
                "record_id",
                "field",
                "old_value",
                "new_value",
                "reason",
            ],
        )
    }
</body></html>"""


# ---------------------------------------------------------------------------- PDF
def _latin1(s: str) -> str:
    return s.encode("latin-1", "replace").decode("latin-1")


def render_pdf(c: EbrContent, path: str | Path) -> Path:
    """The EBR as a PDF (fpdf2 core fonts: text is reduced to Latin-1)."""
    from fpdf import FPDF

    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(True, margin=12)
    pdf.add_page()

    def h(text: str, size: int = 12) -> None:
        pdf.set_font("Helvetica", "B", size)
        pdf.cell(0, 7, _latin1(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 8)

    def para(text: str) -> None:
        pdf.set_font("Helvetica", "", 8)
        pdf.multi_cell(0, 4, _latin1(text), new_x="LMARGIN", new_y="NEXT")

    def table(rows: list[dict[str, Any]], cols: list[str], width: int = 30) -> None:
        if not rows:
            para("none")
            return
        pdf.set_font("Helvetica", "", 7)
        with pdf.table(col_widths=[width] * len(cols), text_align="LEFT", line_height=3.6) as t:
            r = t.row()
            for col in cols:
                r.cell(_latin1(col))
            for row in rows:
                r = t.row()
                for col in cols:
                    r.cell(_latin1(_fmt(row.get(col)))[:80])
        pdf.ln(2)

    h(f"Electronic batch record {c.batch_id}", 15)
    rel = (
        f"{c.release['decision'].upper()} by {c.release['printed_name']} on "
        f"{_fmt(c.release['decided_at'])}"
        if c.release
        else "PENDING QA REVIEW"
    )
    para(f"Release status: {rel}")
    para(f"Generated {_fmt(c.generated_at)}; content SHA-256 {c.content_hash}")
    h("1. Batch and recipe")
    for k, v in c.header.items():
        para(f"{k}: {_fmt(v)}")
    h("2. Materials")
    for k, v in c.materials.items():
        para(f"{k}: {v}")
    h("3. Phases")
    table(c.phases, ["phase", "start_ts", "end_ts"], 50)
    h("4. CPP trends (NOR per phase shaded, PAR dashed; means vs hours from inoculation)")
    for t in c.trends:
        if pdf.get_y() > 250:
            pdf.add_page()
        _pdf_chart(pdf, t)
    h("5. CPP excursions")
    table(c.excursions, ["excursion_id", "tag", "start_ts", "minutes_outside_par", "severity"], 36)
    h("6. Deviations")
    table(c.deviations, ["deviation_id", "severity", "title", "state", "signature_id"], 36)
    h("7. Critical quality attributes")
    cqa = [
        {
            **q,
            "spec": _spec_text(q["spec_lo"], q["spec_hi"]),
            "result": "pass" if q["within_spec"] else "FAIL",
        }
        for q in c.cqas
    ]
    table(cqa, ["analyte", "value", "uom", "spec", "result"], 36)
    h("8. Electronic signatures")
    if not c.signatures:
        para("no signatures yet")
    for s, ok, note in c.signatures:
        para(
            f"{s.manifestation()} - {s.record_type} {s.record_id}; reason: {s.reason}; "
            f"record SHA-256 {s.record_hash[:16]}...; {'VERIFIED' if ok else 'INVALID'}: {note}"
        )
    h("9. Audit trail excerpt")
    table(c.audit, ["seq", "ts_utc", "actor", "action", "record_id", "new_value"], 30)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(out))
    return out


def _pdf_chart(pdf: Any, t: Trend, w: float = 180, hgt: float = 28) -> None:
    x0, y0 = pdf.l_margin + 12, pdf.get_y() + 5
    xmax, lo, hi = _scale(t)

    def X(x: float) -> float:
        return x0 + (w - 14) * x / xmax

    def Y(y: float) -> float:
        return y0 + hgt * (1 - (y - lo) / (hi - lo))

    pdf.set_font("Helvetica", "B", 7)
    pdf.text(pdf.l_margin, y0 - 1, _latin1(f"{t.tag} [{t.uom}]"))
    pdf.set_font("Helvetica", "", 6)
    pdf.set_fill_color(227, 244, 227)
    for h0, h1, nor, _ in t.bands:
        if nor:
            a, b = X(max(0.0, h0)), X(min(xmax, h1))
            pdf.rect(a, Y(nor[1]), b - a, Y(nor[0]) - Y(nor[1]), style="F")
    pdf.set_draw_color(150, 150, 150)
    pdf.rect(x0, y0, w - 14, hgt)
    pdf.set_draw_color(192, 57, 43)
    pdf.set_dash_pattern(dash=1, gap=1)
    for h0, h1, _, par in t.bands:
        for v in par or ():
            pdf.line(X(max(0.0, h0)), Y(v), X(min(xmax, h1)), Y(v))
    pdf.set_dash_pattern()
    pdf.set_draw_color(31, 78, 121)
    pts = [(X(x), Y(y)) for x, y in t.points]
    if len(pts) > 1:
        pdf.polyline(pts)
    pdf.set_draw_color(0, 0, 0)
    pdf.text(pdf.l_margin, y0 + 2, f"{hi:.3g}")
    pdf.text(pdf.l_margin, y0 + hgt, f"{lo:.3g}")
    pdf.text(x0 + w - 24, y0 + hgt + 3, f"{xmax:.0f} h")
    pdf.set_y(y0 + hgt + 5)


def write_ebr(
    lake: Lake,
    batch_id: str,
    out_dir: str | Path,
    actor: str = "system",
    context_id: str | None = None,
) -> tuple[Path, Path, EbrContent]:
    """Write ``<out_dir>/<batch>_ebr.html`` and ``.pdf`` and audit the generation."""
    c = collect(lake, batch_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path = out / f"{batch_id}_ebr.html"
    html_path.write_text(render_html(c), encoding="utf-8")
    pdf_path = render_pdf(c, out / f"{batch_id}_ebr.pdf")
    AuditTrail(lake).record(
        "ebr_generated",
        actor,
        "ebr",
        batch_id,
        "content_hash",
        None,
        c.content_hash,
        "batch record review",
        context_id,
    )
    return html_path, pdf_path, c
