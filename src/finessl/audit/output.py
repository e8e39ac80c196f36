"""What an audit writes: ``audit.json`` (the names other tools read), CSV lists, an HTML
page in the report's style, a one-screen summary, and ``exclude.csv`` for
``--data.exclude``."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from finessl.audit.audit import Audit, train_name
from finessl.rundir import RunDir, atomic_write, write_json

SHOWN = 20  # rows per table on the page and in the summary's lists
THUMBNAILS = 12
JSON_GROUPS = 1000  # duplicate groups audit.json lists (duplicates.csv has them all)

AUDIT_JSON, PAGE, EXCLUDE = RunDir.AUDIT_SUMMARY, "index.html", "exclude.csv"


def audit_dict(result: Audit) -> dict:
    """``audit.json``: ``ood_fraction``, ``test_leaks``, ``label_suspects``, ``duplicates``,
    ``pool_prior`` and the rest; paths as the data names them."""
    names, classes = result.names, result.classes
    order = np.argsort(-result.ood_scores, kind="stable")
    sizes = np.concatenate([result.labeled.sizes, result.pool.sizes, result.test.sizes])
    return {
        "model": result.model,
        "score": result.settings.score,
        "near_similarity": result.settings.near_similarity,
        "sizes": {"classes": len(classes), "labeled": len(result.labeled), "pool": len(result.pool),
                  "test": len(result.test), "unreadable": len(result.failed)},
        "class_counts": {
            "labeled": dict(zip(classes, np.bincount(result.labels, minlength=len(classes)).tolist())),
        },
        "image_sizes": _size_stats(sizes),
        "ood_fraction": round(float(result.ood_fraction), 4),
        "ood_flagged": int(result.ood_flagged.sum()),
        "most_ood": [{"path": names["pool"][i], "score": round(float(result.ood_scores[i]), 5)}
                     for i in order[:200]],
        "duplicates": [[train_name(names, i) for i in g] for g in result.duplicate_groups[:JSON_GROUPS]],
        "duplicate_groups": len(result.duplicate_groups),
        "duplicate_images": sum(len(g) for g in result.duplicate_groups),
        "test_leaks": [{"path": a, "test_path": b, "kind": kind, "similarity": round(s, 5)}
                       for a, b, kind, s in result.leaks],
        "label_suspects": [{"path": names["labeled"][s.position], "label": classes[s.label],
                            "looks_like": classes[s.looks_like], "score": round(s.score, 5)}
                           for s in result.suspects],
        "pool_prior": {c: round(float(p), 5) for c, p in zip(classes, result.pool_prior)},
        "labeled_prior": {c: round(float(p), 5) for c, p in zip(classes, result.labeled_prior)},
        "pool_missing_classes": result.missing,
        "unreadable": [{"path": p, "reason": r} for p, r in result.failed],
    }


def _size_stats(sizes: np.ndarray) -> dict:
    if len(sizes) == 0:
        return {}
    stats = {}
    for axis, name in ((0, "width"), (1, "height")):
        values = sizes[:, axis]
        stats[name] = {"min": int(values.min()), "median": float(np.median(values)),
                       "max": int(values.max())}
    stats["smaller_than_32"] = int((sizes.min(axis=1) < 32).sum())
    return stats


def exclusions(result: Audit) -> Iterator[tuple[str, str]]:
    """(image, why) for ``--data.exclude``, in the data's order: pool images judged out of
    distribution, training images that copy a test image, and every pool copy but one of a
    duplicate group (the first reason found, in that order). Decided on arrays of positions,
    so a pool of copies costs no Python object per image before its row is written."""
    labeled = len(result.names["labeled"])
    size = labeled + len(result.names["pool"])
    why = np.zeros(size, np.int8)  # 0 kept, 1 out of distribution, 2 copies a test image, 3 duplicate
    kept_copy = np.full(size, -1, np.int64)
    why[labeled + np.flatnonzero(result.ood_flagged)] = 1
    leak_of = {}
    for position, (_, test, kind, _) in zip(result.leak_positions, result.leaks):
        if why[position] == 0:
            why[position], leak_of[position] = 2, f"{kind} copy of test image {test}"
    for group in result.duplicate_groups:
        members = np.asarray(group, np.int64)
        keep = members[members < labeled][0] if (members < labeled).any() else members[0]
        others = members[(members != keep) & (members >= labeled) & (why[members] == 0)]
        why[others], kept_copy[others] = 3, keep
    for position in np.flatnonzero(why).tolist():
        if why[position] == 1:
            reason = f"out of distribution (score {result.ood_scores[position - labeled]:.3f})"
        elif why[position] == 2:
            reason = leak_of[position]
        else:
            reason = f"duplicate of {train_name(result.names, int(kept_copy[position]))}"
        yield train_name(result.names, position), reason


def write_audit(result: Audit, out: Path, image: Callable[[str, int], object] | None = None) -> Path:
    """Writes every file of an audit into ``out``; returns the page. ``image(set, position)``
    gives a PIL image for the page's thumbnails."""
    out.mkdir(parents=True, exist_ok=True)
    data = audit_dict(result)
    write_json(out / AUDIT_JSON, data)
    names = result.names
    order = np.argsort(-result.ood_scores, kind="stable")
    _csv(out / "ood.csv", ["path", "score", "judged_ood"],  # a row per pool image: streamed
         ([names["pool"][i], f"{result.ood_scores[i]:.6f}", int(result.ood_flagged[i])] for i in order))
    _csv(out / "duplicates.csv", ["group", "path"],
         ([g, train_name(names, p)] for g, group in enumerate(result.duplicate_groups) for p in group))
    _csv(out / "test_leaks.csv", ["path", "test_path", "kind", "similarity"],
         [[a, b, k, f"{s:.5f}"] for a, b, k, s in result.leaks])
    _csv(out / "label_suspects.csv", ["path", "label", "looks_like", "score"],
         [[r["path"], r["label"], r["looks_like"], r["score"]] for r in data["label_suspects"]])
    _csv(out / "pool_prior.csv", ["class", "pool_share", "labeled_share"],
         [[c, data["pool_prior"][c], data["labeled_prior"][c]] for c in result.classes])
    _csv(out / EXCLUDE, ["path", "reason"], (list(row) for row in exclusions(result)))
    page = out / PAGE
    text = _page(result, data, out, image)
    atomic_write(page, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return page


def _csv(path: Path, header: list[str], rows: Iterable[list]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(path, write)


def summary(result: Audit, out: Path | None = None) -> str:
    """The one-screen summary the command prints."""
    data = audit_dict(result)
    sizes = data["sizes"]
    lines = [f"audit of {sizes['labeled']:,} labeled, {sizes['pool']:,} unlabeled and "
             f"{sizes['test']:,} test images ({sizes['classes']} classes) with {result.model}"]
    if sizes["unreadable"]:
        lines.append(f"  unreadable: {sizes['unreadable']} file(s), skipped")
    lines.append(f"  out of distribution: about {100 * data['ood_fraction']:.0f} % of the unlabeled pool "
                 f"({data['ood_flagged']:,} images judged so)")
    extra = data["duplicate_images"] - data["duplicate_groups"]
    lines.append(f"  duplicates: {data['duplicate_groups']} group(s), {extra} extra copies")
    leaks = data["test_leaks"]
    lines.append(f"  test-set copies among the training images: {len(leaks)}"
                 + (" <- the test accuracy would be inflated" if leaks else ""))
    for leak in leaks[:3]:
        lines.append(f"    {leak['path']}  =  {leak['test_path']} ({leak['kind']})")
    worst = [s for s in data["label_suspects"] if s["score"] > 0.5][:5]
    lines.append(f"  seed labels that look wrong: {len(worst)} with score > 0.5"
                 + ("" if not worst else f" (most suspect: {worst[0]['path']} labeled "
                    f"{worst[0]['label']!r}, looks like {worst[0]['looks_like']!r})"))
    prior = sorted(data["pool_prior"].items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{c} {100 * p:.0f}%" for c, p in prior[:6])
    lines.append(f"  pool prior (estimated): {shown}{' ...' if len(prior) > 6 else ''}")
    if data["pool_missing_classes"]:
        lines.append(f"  classes the pool seems to lack: {', '.join(data['pool_missing_classes'][:10])}")
    if out is not None:
        lines.append(f"written to {out}/ ({AUDIT_JSON}, CSV lists, {PAGE}); train without the "
                     f"flagged images: --data.exclude {out / EXCLUDE}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the page


def _thumb(image) -> str:
    if image is None:
        return ""
    picture = image.convert("RGB")
    picture.thumbnail((64, 64))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _page(result: Audit, data: dict, out: Path, image) -> str:
    from finessl.eval.report import html_figures, html_page, html_table

    names = result.names

    def thumb(kind: str, position: int, rank: int) -> str:
        if image is None or rank >= THUMBNAILS:
            return ""
        try:
            return _thumb(image(kind, position))
        except Exception:  # noqa: BLE001 (a thumbnail never stops the page)
            return ""

    def rows_html(rows: list[list], header: list[str]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
        return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'

    order = np.argsort(-result.ood_scores, kind="stable")[:SHOWN]
    ood_rows = [[thumb("pool", int(i), r), html.escape(names["pool"][i]), f"{result.ood_scores[i]:.3f}"]
                for r, i in enumerate(order)]
    suspect_rows = [[thumb("labeled", s.position, r), html.escape(names["labeled"][s.position]),
                     html.escape(result.classes[s.label]), html.escape(result.classes[s.looks_like]),
                     f"{s.score:.3f}"] for r, s in enumerate(result.suspects[:SHOWN])]
    test_pos = {n: i for i, n in enumerate(names["test"])}
    leak_rows = [[thumb("test", test_pos[b], r), html.escape(a), html.escape(b), k, f"{s:.3f}"]
                 for r, (a, b, k, s) in enumerate(result.leaks[:SHOWN])]
    dup_rows = [[len(g), "<br>".join(html.escape(train_name(names, p)) for p in g[:6]) +
                 (" ..." if len(g) > 6 else "")] for g in result.duplicate_groups[:SHOWN]]
    prior_rows = [[c, f"{100 * data['pool_prior'][c]:.1f}", f"{100 * data['labeled_prior'][c]:.1f}"]
                  for c in result.classes]
    figure = _histogram(result, out)
    sizes = data["sizes"]
    overview = html_table([[k, v] for k, v in [
        ("model", result.model), ("classes", sizes["classes"]), ("labeled", sizes["labeled"]),
        ("unlabeled pool", sizes["pool"]), ("test", sizes["test"]), ("unreadable", sizes["unreadable"]),
        ("out of distribution (estimated share of the pool)", f"{100 * data['ood_fraction']:.1f} %"),
        ("duplicate groups", data["duplicate_groups"]), ("test-set copies", len(data["test_leaks"])),
        ("OOD score", data["score"]), ("near-copy similarity", data["near_similarity"]),
        ("image sizes", data["image_sizes"])]], ["", ""], 'class="context"')
    body = (f"<h1>finessl data audit</h1>{overview}"
            f"<h2>Out-of-distribution images in the pool</h2>{html_figures([('OOD scores', figure)])}"
            f"{rows_html(ood_rows, ['', 'image', 'score'])}"
            f"<h2>Training images that copy test images ({len(result.leaks)})</h2>"
            f"{rows_html(leak_rows, ['test image', 'training image', 'test image', 'kind', 'similarity'])}"
            f"<h2>Seed labels that look wrong</h2>"
            f"{rows_html(suspect_rows, ['', 'image', 'label', 'looks like', 'score'])}"
            f"<h2>Duplicate groups ({len(result.duplicate_groups)})</h2>"
            f"{rows_html(dup_rows, ['copies', 'images'])}"
            f"<h2>Class prior: pool (EM estimate) against the labeled set, %</h2>"
            f"{rows_html(prior_rows, ['class', 'pool', 'labeled'])}"
            + (f"<p>Classes the pool seems to lack: {html.escape(', '.join(result.missing))}</p>"
               if result.missing else ""))
    return html_page("finessl data audit", body)


def _histogram(result: Audit, out: Path) -> Path | None:
    from finessl.eval.plots import _pyplot, _save

    if len(result.ood_scores) == 0:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    bins = np.linspace(min(result.ood_scores.min(), result.labeled_scores.min(initial=1.0)),
                       max(result.ood_scores.max(), result.labeled_scores.max(initial=0.0)), 40)
    ax.hist(result.ood_scores, bins=bins, density=True, alpha=0.6, label="unlabeled pool")
    if len(result.labeled_scores):
        ax.hist(result.labeled_scores, bins=bins, density=True, alpha=0.6,
                label="labeled (each held out, against the other half)")
    ax.set(xlabel=f"OOD score ({result.settings.score}; higher = less like the labeled classes)",
           ylabel="density")
    ax.legend()
    return _save(fig, out / "ood_scores.png")
