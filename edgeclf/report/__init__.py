"""`edgeclf report`: one self-contained HTML page for a run, its artefacts and their devices."""
from __future__ import annotations

from pathlib import Path

from edgeclf.atomic import write_text_atomic
from edgeclf.errors import UsageError

REPORT_FILE = "report.html"


def write_report(run_dir, out=None, extra_bench_dirs=()) -> dict:
    """Gather what the run holds, render it, and write the page atomically; returns where and what."""
    from edgeclf.report.gather import gather
    from edgeclf.report.render import GENERATOR_TAG, render

    report = gather(run_dir, extra_bench_dirs)
    path = Path(out).expanduser().resolve() if out else report.run_dir / REPORT_FILE
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory", "give a file name, e.g. --out report.html")
    if not path.parent.is_dir():
        raise UsageError(f"the folder {path.parent} does not exist", "create it first or choose another --out")
    if path.is_file() and GENERATOR_TAG not in path.read_text(errors="replace")[:4096]:
        raise UsageError(f"{path} exists and is not an edgeclf report", "choose another --out; edgeclf replaces only files it wrote")
    # ASCII with character references: the same bytes whatever the locale's encoding.
    page = render(report).encode("ascii", "xmlcharrefreplace").decode("ascii")
    write_text_atomic(path, page)
    return {
        "path": str(path),
        "bytes": len(page),
        "run_dir": str(report.run_dir),
        "artefacts": [e["name"] for e in report.exports],
        "benches": [b["name"] for b in report.benches],
        "problems": report.problems,
    }
