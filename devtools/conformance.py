"""Build the conformance corpus, compile every model with every backend for x86-64 and
write the conformance table: ``benchmarks/results/conformance.json`` and ``.md``, and the
README's table between its ``conformance table`` markers.

    PYTHONPATH=. python devtools/conformance.py [--backend NAME ...] [--model PREFIX ...] [--render]

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
    """Markdown: per backend its share of the corpus and a table of model, compiled,
    validated, max abs difference from ONNX Runtime and compile seconds; then the failures."""
    lines: list[str] = []
    for backend in backends:
        mine = [r for r in rows if r["backend"] == backend]
        ok = sum(r["validated"] for r in mine)
        lines += [
            f"**{backend}**: {ok}/{len(mine)} compiled and validated ({100 * ok / max(len(mine), 1):.0f}%)",
            "",
            "| model | compiled | validated | max abs diff | seconds |",
            "|---|---|---|---|---|",
        ]
        for r in mine:
            diff = "–" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
            compiled, validated = ("yes" if r[k] else "**no**" for k in ("compiled", "validated"))
            lines.append(f"| {r['model']} | {compiled} | {validated} | {diff} | {r['seconds']:.1f} |")
        lines.append("")
    for r in rows:
        if not r["validated"]:
            lines.append(f"- {r['model']} on {r['backend']}: {r['error']}")
    return "\n".join(lines).rstrip("\n") + "\n"


def compile_corpus(backends: list[str], prefixes: list[str] | None) -> list[dict]:
    """Build the corpus and compile the selected models with ``backends``; the rows."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgekiln-conformance-") as tmp:
        files = corpus.build_all(Path(tmp) / "models")
        for model, path in files.items():
            if prefixes and not any(model.startswith(p) for p in prefixes):
                continue
            for backend in backends:
                row = corpus.compile_one(model, path, backend, Path(tmp))
                print(json.dumps(row.as_dict()), flush=True)
                rows.append(row.as_dict())
    return rows


def merged(rows: list[dict]) -> list[dict]:
    """``rows`` replacing their (model, backend) in the committed results: a partial run
    (some backends or models) updates only what it ran."""
    previous = RESULTS / "conformance.json"
    done = {(r["model"], r["backend"]) for r in rows}
    old = json.loads(previous.read_text())["rows"] if previous.exists() else []
    rows = [r for r in old if (r["model"], r["backend"]) not in done] + rows
    return sorted(rows, key=lambda r: (corpus.BACKENDS.index(r["backend"]), corpus.MODELS.index(r["model"])))


def write(rows: list[dict], readme: bool) -> None:
    """The results JSON, the Markdown page and (``readme``) the README's table."""
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
    if readme:
        path = ROOT / "README.md"
        body = path.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1]), re.S)
        if pattern.search(body):
            path.write_text(pattern.sub(lambda _: f"{MARKERS[0]}\n{text}{MARKERS[1]}", body), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=corpus.BACKENDS, help="default: all")
    parser.add_argument("--model", action="append", help="only models whose name starts with this")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README's table")
    parser.add_argument("--render", action="store_true", help="only rewrite the tables from the results JSON")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = [] if args.render else compile_corpus(args.backend or list(corpus.BACKENDS), args.model)
    rows = merged(rows) if (args.backend or args.model or args.render) else rows
    write(rows, readme=not args.no_readme)
    print(f"{len(rows)} rows, this run took {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
