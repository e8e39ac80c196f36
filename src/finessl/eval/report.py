"""A readable report of a run, or of several runs side by side: one self-contained HTML page.

One run (``run_dir/report/index.html``): its context (backbone, PEFT, algorithm, labels per
class, data sizes), final numbers, a sortable per-class table (worst classes first: test
accuracy, support, pseudo-labels and their accuracy, margin, most-confused-with class),
training curves, the pseudo-label distribution, a reliability diagram with per-bin counts,
and the configuration. Several runs: curves overlaid, one table of final numbers, and
per-class differences against the first run. Every figure is a PNG embedded in the page,
so it can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from finessl.errors import FinesslError
from finessl.eval import plots
from finessl.eval.estimate import common_estimates
from finessl.eval.summary import ClassRow, summarise_run
from finessl.rundir import RunDir, atomic_write

WORST_SHOWN_FIRST = 10
FINAL_KEYS = ("top1", "estimated_top1", "balanced_acc", "ece", "nll", "top5", "steps", "seconds",
              "trainable_params", "kept_step")


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def html_table(rows: list[list], header: list[str], attrs: str = "") -> str:
    head = "".join(f'<th data-column="{i}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_figures(plots_: list[tuple[str, Path | None]]) -> str:
    return "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{html.escape(title)}'
        f"</figcaption></figure>" for title, path in plots_ if path is not None)


def _class_table(rows: list[ClassRow]) -> str:
    def key(row: ClassRow) -> float:
        return row.accuracy if row.accuracy is not None else float("inf")

    ordered = sorted(rows, key=key)
    body = []
    for rank, row in enumerate(ordered):
        cells = [row.name, row.accuracy, row.support, row.pl_count, row.pl_accuracy, row.margin,
                 f"{row.confused_with} ({row.confused_share:.0f} %)" if row.confused_with else ""]
        marked = ' class="worst"' if rank < WORST_SHOWN_FIRST and row.accuracy is not None else ""
        tds = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in cells)
        body.append(f"<tr{marked}>{tds}</tr>")
    header = ["class", "test accuracy %", "support", "pseudo-labels", "pseudo-label accuracy %",
              "margin", "most confused with"]
    head = "".join(f'<th data-column="{i}">{html.escape(h)}</th>' for i, h in enumerate(header))
    return (f'<table id="classes" class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


SCRIPT = """
<script>
// Errors are recorded on the page, so a headless browser can check for them.
window.addEventListener("error", () => {
  document.body.dataset.jsErrors = (+(document.body.dataset.jsErrors || 0)) + 1;
});
// Click a column header to sort by it; click again to reverse.
const headers = document.querySelectorAll("table.sortable th");
headers.forEach(th => th.addEventListener("click", () => {
  const table = th.closest("table"), body = table.tBodies[0], column = +th.dataset.column;
  const ascending = th.dataset.order !== "asc";
  const value = row => { const t = row.cells[column].textContent.trim();
    const n = parseFloat(t); return isNaN(n) || t === "–" ? (t === "–" ? -Infinity : t) : n; };
  const rows = Array.from(body.rows).sort((a, b) => { const x = value(a), y = value(b);
    const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return ascending ? c : -c; });
  rows.forEach(r => body.appendChild(r));
  table.querySelectorAll("th").forEach(h => delete h.dataset.order);
  th.dataset.order = ascending ? "asc" : "desc";
}));
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);
  document.body.dataset.plotsLoaded = ok ? images.length : "failed";
  const classes = document.getElementById("classes");
  if (classes) document.body.dataset.classRows = classes.tBodies[0].rows.length;
  document.body.dataset.jsErrors = document.body.dataset.jsErrors || 0;
});
</script>"""

STYLE = """<style>body{font-family:sans-serif;max-width:1400px;margin:1.5em auto;color:#222}
figure{display:inline-block;margin:.8em;vertical-align:top}img{max-width:100%}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f0f0}table.sortable th{cursor:pointer}tr.worst td{background:#fff0f0}
.context td,.context th{font-size:.95em}pre{background:#f6f6f6;padding:1em;overflow:auto}
.scroll{max-height:520px;overflow:auto;display:inline-block}</style>"""


def html_page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title>{STYLE}</head><body>{body}{SCRIPT}</body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Writes ``run_dir/report/*.png`` and ``run_dir/report/index.html``; returns the page.

    Every input is read (and checked) before anything is written."""
    summary = summarise_run(run_dir)
    RunDir(run_dir).check_no_links()
    out = summary.path / RunDir.REPORT
    out.mkdir(exist_ok=True)
    figures: list[tuple[str, Path | None]] = [
        ("Over training", plots.plot_training([summary], out / "training.png")),
        ("Pseudo-label class distribution", plots.plot_pseudo_labels(summary, out / "pseudo_labels.png")),
    ]
    if summary.logits is not None:
        ece = summary.final.get("ece", plots.reliability_bins(summary.logits, summary.labels)[3])
        figures += [
            (f"Reliability diagram (ECE {ece:.4f}; test images per bin below)",
             plots.plot_reliability(summary.logits, summary.labels, ece, out / "reliability.png")),
            ("Confusion matrix", plots.plot_confusion(summary.logits, summary.labels, summary.classes,
                                                      out / "confusion.png")),
        ]
    figures.append(("Per-class accuracy, sorted", plots.plot_sorted_accuracy([summary],
                                                                             out / "per_class.png")))
    context = html_table([[k, v] for k, v in summary.context.items()], ["run", str(summary.path)],
                     'class="context"')
    final = html_table([[k, summary.final[k]] for k in FINAL_KEYS if k in summary.final],
                   ["metric", "value"])
    if summary.final.get("estimate_warnings"):
        final += "".join(f"<p>Estimate warning: {html.escape(str(w))}</p>"
                         for w in summary.final["estimate_warnings"])
    body = (f"<h1>finessl run: {html.escape(summary.name)}</h1>{context}"
            f"<h2>Final numbers</h2>{final}"
            f"<h2>Classes ({len(summary.rows)}; the {WORST_SHOWN_FIRST} worst first, shaded; "
            f"click a header to sort)</h2><div class=\"scroll\">{_class_table(summary.rows)}</div>"
            f"<h2>Plots</h2>{html_figures(figures)}{_audit_section(summary.path)}"
            f"<h2>Configuration</h2><pre>{html.escape(summary.config_text)}</pre>")
    page = out / "index.html"
    text = html_page(f"finessl report: {summary.name}", body)
    atomic_write(page, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return page


def _audit_section(run_path: Path) -> str:
    """The run's data audit (``finessl audit --run DIR`` writes ``DIR/audit``), if there is one."""
    import json

    path = run_path / RunDir.AUDIT / RunDir.AUDIT_SUMMARY
    if not path.is_file():
        return ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        share = f"{100 * float(data['ood_fraction']):.1f} %"
        rows = [["out of distribution (estimated share of the pool)", share],
                ["training images that copy test images", len(data["test_leaks"])],
                ["duplicate groups", data.get("duplicate_groups", len(data["duplicates"]))],
                ["seed labels that look wrong (score > 0.5)",
                 sum(1 for s in data["label_suspects"] if float(s["score"]) > 0.5)],
                ["classes the pool seems to lack", ", ".join(map(str, data.get("pool_missing_classes", [])))
                 or "none"]]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "<h2>Data audit</h2><p>audit/audit.json is damaged; run finessl audit again.</p>"
    return (f'<h2>Data audit</h2>{html_table(rows, ["", ""])}'
            f'<p><a href="../{RunDir.AUDIT}/index.html">The whole audit</a></p>')


def _estimates_table(runs) -> str:
    """Estimated accuracies side by side: which run is better, with no test set at all."""
    method, values = common_estimates([r.final for r in runs])
    if method is None:
        return ""
    rows = [[r.name, v, r.final.get("top1")] for r, v in zip(runs, values)]
    header = ["run", "estimated top-1 %", "test top-1 %"]
    crossed = [r.cross_fit for r in runs]
    if all(crossed):  # every run cross-fitted: its held-out-calibrated estimate beside
        header.insert(2, "cross-fitted estimate %")
        for row, found in zip(rows, crossed):
            row.insert(2, f"{found['estimated_top1']:.1f} ({found['estimate_method']})")
    return (f"<h3>Estimated without labels ({html.escape(method)}, the same estimator for every "
            f"run)</h3>" + html_table(rows, header, 'class="sortable"')
            + "<p>How far the estimate can be trusted: see the README (label-free estimates).</p>")


def write_comparison(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Several runs side by side: overlaid curves, final numbers, per-class differences
    against the first run. Writes ``out/index.html``."""
    if len(run_dirs) < 2:
        raise FinesslError("a comparison needs at least two runs (--run A --run B)")
    runs = [summarise_run(path) for path in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder names in different places
        for run in runs:
            run.name = str(run.path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FinesslError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, Path | None]] = [
        ("Over training, all runs", plots.plot_training(runs, out / "training.png")),
        ("Per-class accuracy, sorted", plots.plot_sorted_accuracy(runs, out / "per_class.png")),
    ]
    table = html_table([[r.name, r.context["algorithm"], r.context["backbone"], r.context["PEFT"],
                     *[r.final.get(k) for k in FINAL_KEYS]] for r in runs],
                   ["run", "algorithm", "backbone", "PEFT", *FINAL_KEYS], 'class="sortable"')
    table += _estimates_table(runs)
    deltas = ""
    base = runs[0]
    for other in runs[1:]:
        if other.classes != base.classes:
            deltas += f"<p>{html.escape(other.name)} has other classes than {html.escape(base.name)}.</p>"
            continue
        pairs = [(a.name, a.accuracy, b.accuracy) for a, b in zip(base.rows, other.rows)
                 if a.accuracy is not None and b.accuracy is not None]
        diff = [(name, x, y, y - x) for name, x, y in pairs]
        diff.sort(key=lambda item: item[3])
        title = f"{other.name} minus {base.name}, per class"
        figures.append((title, plots.plot_deltas([d[0] for d in diff], [d[3] for d in diff], title,
                                                 out / f"delta_{len(figures)}.png")))
        deltas += (f"<h3>{html.escape(title)} (largest losses first)</h3><div class=\"scroll\">" +
                   html_table([list(d) for d in diff], ["class", base.name, other.name, "difference"],
                          'class="sortable"') + "</div>")
    body = (f"<h1>finessl: {len(runs)} runs compared</h1><h2>Final numbers</h2>{table}"
            f"<h2>Plots</h2>{html_figures(figures)}<h2>Per-class differences</h2>{deltas}")
    page = out / "index.html"
    text = html_page("finessl comparison", body)
    atomic_write(page, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return page
