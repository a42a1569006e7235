"""Turn a :class:`surgery.Report` into words and files: executive summary, risk notes, the
plan in plain words, Markdown, one self-contained HTML file, and a PDF (matplotlib's
PdfPages: figures and text pages, no other layout dependency)."""
from __future__ import annotations

import base64
import html
import io
import os
import textwrap

import yaml

from surgery.reporting import plots as report_plots

__all__ = ["summary_rows", "risks", "plan_in_words", "markdown", "write_html", "write_pdf", "fmt"]

HEAVY, THIN, CLASS_DROP, PRUNE_DROP = 0.70, 8, 0.05, 0.05


def fmt(key: str, value) -> str:
    """How every number is written (HTML, PDF and Markdown alike)."""
    if value is None:
        return "n/a"
    if key == "accuracy":
        return f"{100 * value:.2f}%"
    if key == "latency":
        return f"{value:.2f} ms"
    if key == "size":
        return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"
    return f"{int(value):,}"


def _change(key: str, a, b) -> str:
    if a is None or b is None:
        return ""
    if key == "accuracy":
        return f"{100 * (b - a):+.2f} points"
    return f"{b / a:.1%} kept" if a else ""


def summary_rows(report) -> list[tuple[str, str, str, str]]:
    rows = []
    m = report.metrics or {}
    o, p = m.get("original") or {}, m.get("pruned") or {}
    if "accuracy" in p:
        rows.append(("top-1 accuracy", fmt("accuracy", o.get("accuracy")), fmt("accuracy", p["accuracy"]),
                     _change("accuracy", o.get("accuracy"), p["accuracy"])))
    params = (o.get("params", report.params[0]), p.get("params", report.params[1]))
    flops = (o.get("flops", report.flops[0]), p.get("flops", report.flops[1]))
    rows.append(("parameters", fmt("n", params[0]), fmt("n", params[1]), _change("n", *params)))
    rows.append(("FLOPs (MACs)", fmt("n", flops[0]), fmt("n", flops[1]), _change("n", *flops)))
    shot = m.get("one_shot") or {}
    if shot.get("accuracy_structural") is not None:
        rows.append(("one-shot accuracy: rewrite / + " + " + ".join(r.split()[-1] for r in shot["repairs"]),
                     fmt("accuracy", shot["accuracy_structural"]), fmt("accuracy", shot["accuracy"]),
                     _change("accuracy", shot["accuracy_structural"], shot["accuracy"])))
    if p.get("sparsity"):
        rows.append(("zero weights (Conv/Linear)", f"{o.get('sparsity', 0.0):.1%}", f"{p['sparsity']:.1%}", ""))
    for batch in (p.get("latency_ms") or {}):
        a, b = (o.get("latency_ms") or {}).get(batch, {}).get("median_ms"), p["latency_ms"][batch]["median_ms"]
        spread = p["latency_ms"][batch].get("spread")
        label = f"latency, batch {batch} (median" + (f", spread {spread:.0%})" if spread is not None else ")")
        rows.append((label, fmt("latency", a), fmt("latency", b),
                     "" if not (a and b) else f"{a / b:.2f}x faster" if a >= b else f"{b / a:.2f}x slower"))
    if "size_bytes" in p:
        rows.append(("size on disk", fmt("size", o.get("size_bytes")), fmt("size", p["size_bytes"]),
                     _change("n", o.get("size_bytes"), p["size_bytes"])))
    return rows


def budget_text(prune: dict) -> str:
    """The budget a prune section states, in words ("target: keep 50% of FLOPs")."""
    kind = prune.get("kind", "channel")
    if kind != "channel" and prune.get("ratio") is not None:
        what = {"kernel": "whole kernels", "intra_kernel": "positions inside each kernel"}.get(kind, "weights")
        return f"target: zero {prune['ratio']:.0%} of the {what} (masks, {kind} sparsity)"
    if prune.get("target_flops") is not None:
        return f"target: keep {prune['target_flops']:.0%} of FLOPs"
    if prune.get("target_params") is not None:
        return f"target: keep {prune['target_params']:.0%} of parameters"
    if prune.get("ratio") is not None:
        scope = "of all channels (global ranking)" if prune.get("global_pruning") else "of each group's channels"
        return f"target: remove {prune['ratio']:.0%} {scope}"
    return ""


def headline(report) -> str:
    """One sentence: what was pruned, how, and whether it was verified."""
    cfg = report.config or {}
    p, m = cfg.get("prune") or {}, report.metrics or {}
    budget = budget_text(p)
    parts = [f"{cfg['model']['name']} on {cfg['data']['name']}" if cfg.get("model") else "",
             f"criterion {p['criterion']}" if p.get("criterion") else "", budget,
             f"{p['iterative_steps']} steps" if p.get("iterative_steps", 1) > 1 else "",
             f"fine-tuned {cfg['finetune']['epochs']} epochs" if cfg.get("finetune") else "",
             m.get("verification", ""), run_line(m)]
    return "; ".join(x for x in parts if x) or "Per-layer comparison of the original and the pruned model."


def run_line(metrics: dict) -> str:
    """How the run ran: world size, backend, and where each checkpoint came from."""
    if "world_size" not in metrics:
        return ""
    origins = ", ".join(f"{k} model {v}" for k, v in (metrics.get("origins") or {}).items())
    return f"world size {metrics['world_size']} (backend {metrics['backend']})" + (f"; {origins}" if origins else "")


def risks(report) -> list[str]:
    out = []
    for r in report.layers:
        before, after = r.channels
        if before and (r.type.startswith("Conv") or r.type == "Linear"):
            if 1 - after / before > HEAVY:
                out.append(f"{r.name} lost {1 - after / before:.0%} of its channels ({before} -> {after}), "
                           f"more than {HEAVY:.0%}")
            if after <= THIN < before:
                out.append(f"{r.name} is left with {after} channels ({THIN} or fewer)")
    m = report.metrics or {}
    o, p = (m.get("original") or {}), (m.get("pruned") or {})
    names = m.get("class_names") or []
    for i, (a, b) in enumerate(zip(o.get("per_class_accuracy") or [], p.get("per_class_accuracy") or [])):
        if a is not None and b is not None and a - b > CLASS_DROP:
            name = names[i] if i < len(names) else str(i)
            out.append(f"class {name}: accuracy fell {100 * (a - b):.1f} points ({fmt('accuracy', a)} -> "
                       f"{fmt('accuracy', b)})")
    if m.get("latency_warning"):
        out.append(m["latency_warning"])
    verification = m.get("verification") or ""
    if verification and not verification.startswith("verified"):
        out.append(f"not every group was verified exactly: {verification}")
    if o.get("accuracy") is not None and m.get("accuracy_after_prune") is not None:
        drop = o["accuracy"] - m["accuracy_after_prune"]
        if drop > PRUNE_DROP:
            out.append(f"accuracy fell {100 * drop:.1f} points right after pruning (before fine-tuning: "
                       f"{fmt('accuracy', m['accuracy_after_prune'])}); after fine-tuning "
                       f"{fmt('accuracy', p.get('accuracy'))}, a recovery ratio (fine-tuned / original accuracy) of "
                       f"{p.get('accuracy', 0) / o['accuracy']:.1%}" if o["accuracy"] else "")
    return out


def plan_in_words(report) -> list[str]:
    info = report.insight or {}
    criterion = info.get("criterion") or (report.config or {}).get("prune", {}).get("criterion", "")
    lines = []
    for g in info.get("groups", []):
        if g["frozen"]:
            lines.append(f"{g['anchor']} ({g['size']} channels): frozen, {g['frozen']}")
        elif g["removed"]:
            lines.append(f"{g['anchor']} ({g['size']} channels): removed {g['removed']}, kept "
                         f"{g['size'] - g['removed']}, lowest {criterion} scores")
        else:
            lines.append(f"{g['anchor']} ({g['size']} channels): kept whole")
    if not lines:
        lines = [f"{r.name}: {r.channels[0]} -> {r.channels[1]} channels" for r in report.layers
                 if r.channels[0] != r.channels[1]]
    return lines


def _repro(report) -> str:
    env = "\n".join(f"{k}: {v}" for k, v in report.environment.items())
    cfg = yaml.safe_dump(report.config, sort_keys=False) if report.config else "(no configuration given)\n"
    return f"{env}\n\nresolved configuration:\n{cfg}"


def markdown(report) -> str:
    lines = [f"# {report.title}", "", headline(report), "", "## Summary", "", "| | before | after | change |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(report)]
    lines += ["", "## Risk notes", ""] + [f"- {r}" for r in risks(report) or ["none found"]]
    lines += ["", "## Plan", ""] + [f"- {p}" for p in plan_in_words(report)]
    lines += ["", "## Reproducibility", "", "```", _repro(report).rstrip(), "```", ""]
    return "\n".join(lines)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2933}table{border-collapse:collapse;margin:1em 0}td,th{padding:.35em .8em;
border-bottom:1px solid #d9dee3;text-align:right}td:first-child,th:first-child{text-align:left}
h1{font-size:1.7em}h2{margin-top:1.6em;border-bottom:2px solid #2a7ab0;padding-bottom:.2em}
img{max-width:100%;display:block;margin:.5em 0 1.5em}pre{background:#f4f6f8;padding:1em;overflow-x:auto;
font-size:.85em}li{margin:.2em 0}.risk{color:#9b1c31}"""


def write_html(report, path) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td><td>{e(d)}</td></tr>"
                   for a, b, c, d in summary_rows(report))
    risk = "".join(f"<li class='risk'>{e(r)}</li>" for r in risks(report)) or "<li>none found</li>"
    figs = "".join(f"<h3>{e(t)}</h3><img alt='{e(t)}' src='data:image/png;base64,{_png(f)}'>"
                   for t, f in report_plots.figures(report))
    plan = "".join(f"<li>{e(p)}</li>" for p in plan_in_words(report))
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(report.title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{e(report.title)}</h1><p>{e(headline(report))}</p><h2>Summary</h2>"
           f"<table><tr><th></th><th>before</th><th>after</th><th>change</th></tr>{rows}</table>"
           f"<h2>Risk notes</h2><ul>{risk}</ul><h2>Figures</h2>{figs}<h2>Plan</h2><ul>{plan}</ul>"
           f"<h2>Reproducibility</h2><pre>{e(_repro(report))}</pre></body></html>")
    _write(path, doc)
    return str(path)


def write_pdf(report, path) -> str:
    """A4 pages: the summary (target, table, risk notes, the channel chart when it fits), then
    every other figure once and the plan with the environment, two to a page (the full
    configuration is in the HTML report and config.yaml)."""
    plt = report_plots.pyplot()
    from matplotlib.backends.backend_pdf import PdfPages
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with PdfPages(path) as pdf:
        first, charted = _summary_page(plt, report)
        pdf.savefig(first)
        plt.close(first)
        slots = [(title, fig) for title, fig in report_plots.figures(report)
                 if not (charted and title == "Channels per layer")]
        slots.append(("Plan and environment", _appendix_lines(report)))
        for pair in (slots[i:i + 2] for i in range(0, len(slots), 2)):
            page = _half_pages(plt, pair)
            pdf.savefig(page)
            plt.close(page)
    return str(path)


def _half_pages(plt, pair: list):
    """One A4 page holding two slots, each a figure (rasterised at 150 dpi so it keeps its own
    layout) or lines of text, in its half."""
    page = plt.figure(figsize=(8.27, 11.69))
    for k, (title, content) in enumerate(pair):
        top = 0.95 - 0.47 * k
        page.text(0.06, top, title, fontsize=12, weight="bold", va="top")
        if isinstance(content, list):
            page.text(0.06, top - 0.03, "\n".join(content), fontsize=7.5, va="top", family="monospace")
        else:
            _place(page, content, top - 0.03, plt)
    return page


def _place(page, fig, top: float, plt) -> None:
    import matplotlib.image as mpimg
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    image = mpimg.imread(buf)
    h, w = image.shape[:2]
    box_w, box_h = 0.88, 0.40
    scale = min(box_w * 8.27 / w, box_h * 11.69 / h)  # inches per pixel, aspect kept
    width, height = w * scale / 8.27, h * scale / 11.69
    ax = page.add_axes([0.06 + (box_w - width) / 2, top - height, width, height])
    ax.imshow(image)
    ax.axis("off")


def _appendix_lines(report, limit: int = 38) -> list:
    """The plan in words and the environment, for half a page (a longer plan is cut with a
    pointer to the HTML report, which has all of it, with the configuration)."""
    env = [f"{k}: {v}" for k, v in report.environment.items()]
    tail = ["", "Environment:"] + env + ["", "The full configuration is in config.yaml and in the HTML report."]
    plan = [w for line in plan_in_words(report) for w in (textwrap.wrap(line, 100, subsequent_indent="    ") or [""])]
    room = limit - len(tail) - 1
    if len(plan) > room:
        plan = plan[:room - 1] + [f"... (all {len(plan_in_words(report))} groups in report.html)"]
    return ["Plan, group by group:"] + plan + tail


def _summary_page(plt, report):
    fig = plt.figure(figsize=(8.27, 11.69))
    fig.text(0.08, 0.95, report.title, fontsize=18, weight="bold", va="top")
    fig.text(0.08, 0.915, "\n".join(textwrap.wrap(headline(report), 100)), fontsize=9, va="top")
    rows = summary_rows(report)
    height = 0.022 * (len(rows) + 1)
    ax = fig.add_axes([0.08, 0.86 - height, 0.84, height])
    ax.axis("off")
    table = ax.table(cellText=[list(r) for r in rows], colLabels=["", "before", "after", "change"],
                     loc="upper left", cellLoc="right", colLoc="right", colWidths=[0.46, 0.18, 0.18, 0.18])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.25)
    for (r, c), cell in table.get_celld().items():
        cell.set_edgecolor("#d9dee3")
        if c == 0:
            cell.set_text_props(ha="left")
    y = 0.86 - height - 0.01
    fig.text(0.08, y, "Risk notes", fontsize=13, weight="bold", va="top")
    notes = risks(report) or ["none found"]
    wrapped = [line for n in notes for line in textwrap.wrap("- " + n, 95, subsequent_indent="  ")]
    shown = wrapped[:24] + (["... (all notes in the HTML report and report.md)"] if len(wrapped) > 24 else [])
    fig.text(0.08, y - 0.03, "\n".join(shown), fontsize=8.5,
             va="top", family="monospace", color="#9b1c31" if risks(report) else "#1f2933")
    bottom = y - 0.05 - 0.0145 * len(shown)
    charted = False
    if bottom > 0.35:  # room for the channel chart on the first page
        ax = fig.add_axes([0.1, 0.12, 0.84, min(0.3, bottom - 0.2)])
        charted = report_plots.channels_per_layer(report, ax=ax) is not None
        for label in ax.get_xticklabels():
            label.set_fontsize(max(4, 8 - len(ax.get_xticklabels()) // 12))
    return fig, charted


def _write(path, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
