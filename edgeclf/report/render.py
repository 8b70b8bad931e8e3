"""The report as one self-contained HTML page: inline CSS and JS, every picture a data: URI.

Every string that comes from a file (class names, paths, device names) goes through `esc`.
A section whose data is missing says so in a note instead of disappearing.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from edgeclf import __version__
from edgeclf.console import pct
from edgeclf.report import figures
from edgeclf.report.assets import CSS, SORT_JS
from edgeclf.report.audit_section import audit_section
from edgeclf.report.gather import Report, as_dict, best_epoch, get, sample_images, wrong_predictions
from edgeclf.report.markup import GENERATOR_TAG, Raw, esc, img, kv, mb, note, num, section, table

WRONG_SHOWN = 24
SECTION_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, ZeroDivisionError, OverflowError)


class Page:
    def __init__(self, report: Report):
        self.report = report
        self.info = report.info

    def figure(self, what: str, build, *args) -> str | None:
        """A chart, or None and a named problem when its data is not what it should be."""
        try:
            return build(*args)
        except Exception as exc:  # a chart from odd data must not cost the whole page
            self.report.problem(f"the {what} chart could not be drawn ({type(exc).__name__}: {exc})")
            return None

    def guarded(self, anchor: str, title: str, build) -> Raw | None:
        """A section built from records of unexpected shape becomes a note and a problem, not a lost page."""
        try:
            return build()
        except SECTION_ERRORS as exc:
            self.report.problem(f"the {title} section could not be drawn ({type(exc).__name__}: {exc})")
            return section(anchor, title, [note(f"this section could not be drawn from the run's records ({type(exc).__name__})")])

    # -- sections ------------------------------------------------------------------
    def header(self) -> Raw:
        config = self.info.get("config") or {}
        metrics = self.info.get("metrics") or {}
        cards = [(f"{split} top-1", pct(get(metrics, f"{split}.top1"))) for split in ("val", "test") if split in metrics]
        cards.append(("classes", len(self.report.labels)))
        cards.append(("artefacts", len(self.report.exports)))
        measured = [r for b in self.report.benches for r in b["rows"] if r["ok"] and r["latency"]["p50"] is not None]
        if measured:
            fastest = min(measured, key=lambda r: r["latency"]["p50"])
            cards.append((f"fastest p50 ({fastest['format']}:{fastest['quant']})", num(fastest["latency"]["p50"], unit=" ms")))
        card_html = "".join(f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>' for k, v in cards)
        title = f"{config.get('arch', 'model')} on {'/'.join(Path(str(config.get('data_dir', '?'))).parts[-2:])}"
        return Raw(f"<header><h1>edgeclf report: {esc(title)}</h1><p class='path'>{esc(self.report.run_dir)}"
                   f" &middot; created {esc(self.info.get('created'))}</p><div class='cards'>{card_html}</div></header>")

    def dataset(self) -> Raw:
        dataset = self.info.get("dataset") or {}
        labels = self.report.labels
        splits = {name: s for name, s in dataset.items() if isinstance(s, dict)}
        parts: list = [Raw(f"<p>{esc(len(labels))} classes; split: {esc(dataset.get('split'))}</p>")]
        if splits:
            counts = {name: s.get("per_class") or {} for name, s in splits.items()}
            rows = [[c, *[counts[s].get(c) for s in splits]] for c in labels]
            rows.append(["total", *[s.get("n_images") for s in splits.values()]])
            chart = img(self.figure("class counts", figures.class_counts, counts, labels), "images per class")
            parts.append(Raw(f"<div class='row'>{table(['class', *splits], rows, [[None, *r[1:]] for r in rows])}{chart}</div>"))
            skipped = [(name, s) for name, split in splits.items() for s in split.get("skipped") or []]
            parts.append(Raw("<h3>Skipped files</h3>"))
            parts.append(table(["split", "file", "reason"], [[n, s.get("path"), s.get("reason")] for n, s in skipped])
                         if skipped else Raw("<p>No file was skipped.</p>"))
        else:
            parts.append(note("run.json records no dataset summary (per-class counts, skipped files)"))
        parts.append(Raw("<h3>Sample training images</h3>"))
        parts.append(self.sample_grid())
        return section("dataset", "Dataset", parts)

    def audit(self) -> Raw:
        return audit_section(self.info.get("audit"))

    def sample_grid(self) -> Raw:
        samples = sample_images(self.report)
        if not any(samples.values()):
            return note("no training images could be found on disk (split.json missing, or the files have moved)")
        rows = []
        for name, paths in samples.items():
            thumbs = "".join(img(figures.thumbnail(p), f"{name}: {p.name}", "thumb") for p in paths)
            rows.append(f"<figure class='samples'><figcaption>{esc(name)}</figcaption>{thumbs or esc('(no image found)')}</figure>")
        shown = "" if len(samples) >= len(self.report.labels) else \
            f"<p class='small'>Sample images of the first {len(samples)} of {len(self.report.labels)} classes.</p>"
        return Raw(shown + "<div class='grid'>" + "".join(rows) + "</div>")

    def training(self) -> Raw:
        history = self.info.get("history") or []
        config = self.info.get("config") or {}
        timing = self.info.get("timing") or {}
        parts: list = []
        if history:
            best = best_epoch(history)
            parts.append(img(self.figure("training curves", figures.training_curves, history, best), "training curves"))
            if best:
                record = history[best - 1]
                parts.append(Raw(f"<p>Best epoch: <b>{best}</b> of {len(history)} ({esc(record.get('stage'))}), "
                                 f"val loss {num(record.get('val_loss'), 4)}, val accuracy {pct(record.get('val_accuracy'))}; "
                                 "its weights are the ones the run kept.</p>"))
        else:
            parts.append(note("run.json records no training history"))
        parts.append(Raw("<h3>Wall times</h3>"))
        parts.append(kv([(k.removesuffix("_s"), num(v, 1, " s")) for k, v in timing.items()]) if timing else note("no timing recorded"))
        parts.append(Raw("<h3>Config</h3>"))
        parts.append(kv(sorted(config.items())) if config else note("no config recorded"))
        parts.append(Raw("<h3>Tool versions</h3>"))
        versions = self.info.get("versions") or {}
        parts.append(kv(sorted(versions.items())) if versions else note("no tool versions recorded"))
        return section("training", "Training", parts)

    def results(self) -> Raw:
        metrics = {k: v for k, v in (self.info.get("metrics") or {}).items() if isinstance(v, dict)}
        if not metrics:
            return section("results", "Float model results", [note("run.json records no metrics")])
        rows = [[split, m.get("n_images"), pct(m.get("top1")), pct(m.get("top5"))] for split, m in metrics.items()]
        keys = [[None, m.get("n_images"), m.get("top1"), m.get("top5")] for m in metrics.values()]
        parts: list = [table(["split", "images", "top-1", "top-5"], rows, keys)]
        split = "test" if "test" in metrics else next(iter(metrics))
        m = metrics[split]
        per_class = m.get("per_class") or {}
        parts.append(Raw(f"<h3>Per class ({esc(split)})</h3>"))
        per_class = {c: as_dict(v) for c, v in per_class.items()}
        rows = [[c, v.get("support"), pct(v.get("precision")), pct(v.get("recall"))] for c, v in per_class.items()]
        keys = [[None, v.get("support"), v.get("precision"), v.get("recall")] for v in per_class.values()]
        parts.append(table(["class", "images", "precision", "recall"], rows, keys) if rows else note("no per-class metrics"))
        if m.get("confusion"):
            uri = self.figure("confusion matrix", figures.confusion, m["confusion"], self.report.labels,
                              f"confusion on {split} (top-1 {pct(m.get('top1'))})")
            parts.append(img(uri, f"confusion matrix on {split}", "plot square"))
        parts.append(self.wrong())
        return section("results", "Float model results", parts)

    def wrong(self) -> Raw:
        split, wrong = wrong_predictions(self.report)
        title = Raw(f"<h3>Images the model gets wrong ({esc(split)})</h3>")
        if wrong is None:
            return Raw(title + note("this run does not record which images it got wrong (made by an older edgeclf)"))
        if not wrong:
            return Raw(title + "<p>None: every image was classified correctly.</p>")
        cells = []
        for w in wrong[:WRONG_SHOWN]:
            path = self.report.embeddable(w.get("path"))
            uri = figures.thumbnail(path) if path else None
            picture = img(uri, f"{w.get('true')} predicted as {w.get('predicted')}", "thumb") if uri else esc("(image not available)")
            cells.append(f"<figure class='wrong'>{picture}<figcaption>true <b>{esc(w.get('true'))}</b><br>"
                         f"predicted <b>{esc(w.get('predicted'))}</b> {pct(w.get('confidence'))}</figcaption></figure>")
        more = f"<p>{len(wrong) - WRONG_SHOWN} more in run.json.</p>" if len(wrong) > WRONG_SHOWN else ""
        return Raw(title + "<p>Most confidently wrong first.</p><div class='grid'>" + "".join(cells) + "</div>" + more)

    def artefacts(self) -> Raw:
        exports = self.report.exports
        if not exports:
            return section("artefacts", "Artefacts", [note("no artefacts under exports/ yet (run `edgeclf export` or `edgeclf bench`)")])
        headers = ["artefact", "format", "quant", "io", "size", "gzip", "split", "top-1", "float top-1", "agreement", "changed", "conversion"]
        rows, keys = [], []
        for e in exports:
            rows.append([e["name"], e["target"], e["quant"], e["io"], mb(e["bytes"]), mb(e["gzip_bytes"]), e["split"],
                         pct(e["top1"]), pct(e["float_top1"]), pct(e["agreement"]),
                         "-" if e["changed"] is None else f"{e['changed']} of {e['n_images']}", num(e["conversion_s"], 1, " s")])
            keys.append([None] * 4 + [e["bytes"], e["gzip_bytes"], None, e["top1"], e["float_top1"], e["agreement"], e["changed"], e["conversion_s"]])
        parts: list = [table(headers, rows, keys)]
        unreadable = [e["name"] for e in exports if not e["readable"]]
        if unreadable:
            parts.append(note(f"no readable manifest in: {', '.join(unreadable)}"))
        parts.append(Raw("<h3>Quantization of inputs and outputs, and calibration</h3>"))
        rows = [[e["name"], _tensor(e["input"]), _tensor(e["output"]), _calibration(e["calibration"])] for e in exports]
        parts.append(table(["artefact", "input", "output", "calibration"], rows))
        costs = {e["name"]: e["quant_cost"] for e in exports if e["quant_cost"]}
        parts.append(Raw("<h3>What quantization cost, per class</h3>"))
        if costs:
            parts.append(img(self.figure("per-class quantization cost", figures.quant_cost, costs), "per-class recall change"))
            rows, keys = [], []
            for name, cost in costs.items():
                for c in cost:
                    rows.append([name, c["class"], c["support"], pct(c["float_recall"]), pct(c["recall"]), num(None if c["delta"] is None else 100 * c["delta"], 1)])
                    keys.append([None, None, c["support"], c["float_recall"], c["recall"], c["delta"]])
            parts.append(table(["artefact", "class", "images", "float recall", "artefact recall", "change (points)"], rows, keys))
        else:
            parts.append(note("no manifest records a confusion matrix to compare with the float model"))
        parts.append(Raw("<h3>App mistakes and resize sensitivity</h3>"))
        measured = [e for e in exports if e["last_mile"]]
        for e in measured:
            from edgeclf.lastmile.sensitivity import COLUMNS, table_rows

            lm = e["last_mile"]
            parts.append(note(f"{e['name']}: {lm['split']} split, {lm['n_images']} images, trained with {lm['training_kernel']}"))
            parts.append(table(COLUMNS, table_rows(lm)))
            parts.append(Raw("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lm["recommendation"]) + "</ul>"))
        if not measured:
            parts.append(note("not measured (export with --last-mile)"))
        return section("artefacts", "Artefacts", parts)

    def devices(self) -> Raw:
        benches = self.report.benches
        if not benches:
            return section("devices", "Devices", [note("no bench results under bench/ yet (run `edgeclf bench RUN_DIR --device ...`)")])
        parts: list = []
        for b in benches:
            dev = b["device"]
            hardware = ", ".join(str(dev[k]) for k in ("kind", "model", "soc", "cpu", "arch", "cores", "os") if dev.get(k))
            emulated = " [EMULATED]" if b["emulated"] else ""
            parts.append(Raw(f"<h3>{esc(b['name'])}: {esc(dev.get('name', '?'))}{esc(emulated)}</h3>"
                             f"<p>{esc(hardware or 'device details not recorded')}; {esc(b['runs'])} timed runs; "
                             f"scored on {esc(b['data'] or 'no images (latency only)')}; {esc(b['created'])}</p>"))
            headers = ["format", "quant", "runtime", "threads", "size MB", "top-1", "agreement", "p50 ms", "p90 ms", "p99 ms",
                       "init ms", "peak RSS MB", "speedup", "status"]
            rows, keys = [], []
            for r in b["rows"]:
                lat = r["latency"]
                rows.append([r["format"], r["quant"], r["runtime"] or "-", r["threads"], r["size_mb"], pct(r["top1"]), pct(r["agreement"]),
                             num(lat["p50"]), num(lat["p90"]), num(lat["p99"]), num(r["init_ms"], 1), r["peak_rss_mb"],
                             "-" if r["speedup"] is None else f"{r['speedup']:.2f}x", r["status"]])
                keys.append([None] * 4 + [r["size_mb"], r["top1"], r["agreement"], lat["p50"], lat["p90"], lat["p99"],
                                          r["init_ms"], r["peak_rss_mb"], r["speedup"], None])
            parts.append(table(headers, rows, keys))
            failed = [r for r in b["rows"] if not r["ok"]]
            for r in failed:
                parts.append(note(f"{r['format']}:{r['quant']} did not run: {r['status']}"))
        measured = [r for b in benches for r in b["rows"] if r["ok"] and r["latency"]["p50"] is not None]
        parts.append(Raw("<h3>Latency distribution</h3>"))
        parts.append(img(self.figure("latency", figures.latency_percentiles, measured), "latency percentiles") if measured
                     else note("no device measured any latency"))
        parts.append(Raw("<p class='small'>The runner records percentiles, not each timing, so this shows min, p50, p90 and p99 (p95 on Android).</p>"))
        scored = [r for r in measured if r["top1"] is not None]
        parts.append(Raw("<h3>Accuracy vs latency</h3>"))
        parts.append(img(self.figure("accuracy vs latency", figures.accuracy_vs_latency, scored), "accuracy vs latency") if scored
                     else note("no device scored accuracy (bench ran without images)"))
        return section("devices", "Devices", parts)

    def optimization(self) -> Raw | None:
        record = self.info.get("optimization")
        if not record:
            return None
        prune = record.get("prune") or {}
        pairs = [("source run", record.get("source_run")), ("recipe", json.dumps(record.get("recipe"))),
                 ("QAT", record.get("qat")), ("scheme", record.get("scheme")),
                 ("prune target", pct(prune.get("target")) if prune else "no pruning"),
                 ("sparsity reached", pct(get(prune, "sparsity.overall"))),
                 ("sparsity after QAT", pct(record.get("sparsity_after_qat"))),
                 ("batchnorms folded", record.get("batchnorm_folded"))]
        parts: list = [kv(pairs)]
        source = record.get("source_metrics") or {}
        if source:
            rows = [[split, pct(m.get("top1")), pct(get(self.info, f"metrics.{split}.top1"))] for split, m in source.items()]
            parts.append(table(["split", "source run top-1", "this run top-1"], rows))
        per_layer = get(prune, "sparsity.per_layer") or {}
        if per_layer:
            parts.append(img(self.figure("sparsity", figures.sparsity, per_layer), "sparsity per layer"))
            parts.append(table(["layer", "sparsity"], [[n, pct(v)] for n, v in per_layer.items()], [[None, v] for v in per_layer.values()]))
        return section("optimization", "Optimization", parts)

    def problems(self) -> Raw:
        if not self.report.problems:
            return Raw("")
        items = "".join(f"<li>{esc(p)}</li>" for p in self.report.problems)
        return Raw(f'<div class="problems" id="problems"><b>What this page could not read</b><ul>{items}</ul></div>')

    def html(self) -> str:
        body = [self.guarded(anchor, title, build) for anchor, title, build in (
            ("dataset", "Dataset", self.dataset), ("audit", "Data audit", self.audit), ("training", "Training", self.training),
            ("results", "Float model results", self.results), ("artefacts", "Artefacts", self.artefacts),
            ("devices", "Devices", self.devices), ("optimization", "Optimization", self.optimization))]
        body = [b for b in body if b]
        header = self.guarded("header", "header", self.header)
        nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in (("dataset", "Dataset"), ("audit", "Data audit"), ("training", "Training"),
                       ("results", "Results"), ("artefacts", "Artefacts"), ("devices", "Devices"))
                       ) + (' <a href="#optimization">Optimization</a>' if self.info.get("optimization") else "")
        generated = f"edgeclf {esc(__version__)}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"{GENERATOR_TAG}"
            f"<title>edgeclf report: {esc(self.report.run_dir.name)}</title>"
            f"<style>{CSS}</style></head><body>"
            f"{header}<nav>{nav}</nav>{self.problems()}<main>{''.join(body)}</main>"
            f"<footer>Written by {generated}. One self-contained file: no network needed.</footer>"
            f"<script>{SORT_JS}</script></body></html>\n"
        )


def _tensor(tensor: dict) -> str:
    if not tensor:
        return "-"
    quant = tensor.get("quantization") or {}
    text = f"{tensor.get('dtype', '?')} {tensor.get('shape', '')}"
    if isinstance(quant, dict) and quant.get("scale") is not None:
        text += f", scale {quant['scale']} zero point {quant.get('zero_point')}"
    return text


def _calibration(calib: dict | None) -> str:
    if not calib:
        return "none (not an int8 export)" if calib is None else "-"
    return f"{calib.get('count')} images from {calib.get('source')}, seed {calib.get('seed')}, hash {str(calib.get('sample_hash'))[:12]}"


def render(report: Report) -> str:
    return Page(report).html()
