"""Build the conformance corpus, compile every model with every backend for x86-64 and
write the conformance table: ``benchmarks/results/conformance.json`` and ``.md``, and the
README's table between its ``conformance table`` markers.

    PYTHONPATH=. python devtools/conformance.py [--backend NAME ...] [--model PREFIX ...]

Run it after a change to a backend or a frontend, and commit what it writes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from tests.frameworks import corpus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARKERS = ("<!-- conformance table: begin (devtools/conformance.py) -->", "<!-- conformance table: end -->")


def table(rows: list[dict], backends: list[str]) -> str:
    """The Markdown table: one row per model, per backend compiled / validated / max diff,
    then a line per backend with its share of the corpus."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["backend"]): r for r in rows}
    head = "| model | " + " | ".join(f"{b} compiled | {b} validated | {b} max diff" for b in backends) + " |"
    lines = [head, "|" + "---|" * (1 + 3 * len(backends))]
    for model in models:
        cells = [model]
        for backend in backends:
            r = by.get((model, backend))
            if r is None:
                cells += ["–", "–", "–"]
                continue
            diff = "–" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
            cells += ["yes" if r["compiled"] else "**no**", "yes" if r["validated"] else "**no**", diff]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for backend in backends:
        mine = [r for r in rows if r["backend"] == backend]
        ok = sum(r["validated"] for r in mine)
        lines.append(f"- {backend}: {ok}/{len(mine)} compiled and validated ({100 * ok / max(len(mine), 1):.0f}%)")
    failures = [r for r in rows if not r["validated"]]
    for r in failures:
        lines.append(f"- {r['model']} on {r['backend']}: {r['error']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=corpus.BACKENDS, help="default: all")
    parser.add_argument("--model", action="append", help="only models whose name starts with this")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README's table")
    args = parser.parse_args(argv)
    backends = args.backend or list(corpus.BACKENDS)
    started = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgekiln-conformance-") as tmp:
        files = corpus.build_all(Path(tmp) / "models")
        for model, path in files.items():
            if args.model and not any(model.startswith(p) for p in args.model):
                continue
            for backend in backends:
                row = corpus.compile_one(model, path, backend, Path(tmp))
                print(json.dumps(row.as_dict()), flush=True)
                rows.append(row.as_dict())
    # A partial run (some backends or models) replaces its rows in the committed results.
    previous = RESULTS / "conformance.json"
    if previous.exists() and (args.backend or args.model):
        done = {(r["model"], r["backend"]) for r in rows}
        old = json.loads(previous.read_text())["rows"]
        rows = [r for r in old if (r["model"], r["backend"]) not in done] + rows
        rows.sort(key=lambda r: (corpus.MODELS.index(r["model"]), corpus.BACKENDS.index(r["backend"])))
    backends = [b for b in corpus.BACKENDS if any(r["backend"] == b for r in rows)]
    seconds = round(sum(r["seconds"] for r in rows), 1)
    text = table(rows, backends)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "conformance.json").write_text(
        json.dumps({"target": corpus.TARGET, "compile_seconds": seconds, "rows": rows}, indent=2) + "\n"
    )
    (RESULTS / "conformance.md").write_text(
        f"# Conformance corpus on {corpus.TARGET} ({seconds:.0f} s of compiles)\n\n" + text, encoding="utf-8"
    )
    if not args.no_readme:
        readme = ROOT / "README.md"
        body = readme.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1]), re.S)
        if pattern.search(body):
            readme.write_text(pattern.sub(lambda _: f"{MARKERS[0]}\n{text}{MARKERS[1]}", body), encoding="utf-8")
    print(f"{len(rows)} rows, this run took {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
