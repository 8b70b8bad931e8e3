"""`edgeclf report`: one self-contained HTML page for a run, its artefacts and their devices."""
from __future__ import annotations

from edgeclf.atomic import publish_file
from edgeclf.errors import UsageError
from edgeclf.outputs import REPORT, absolute, check_file_output

REPORT_FILE = REPORT.marker


def write_report(run_dir, out=None, extra_bench_dirs=(), overwrite: bool = False, extra_benches=()) -> dict:
    """Gather what the run holds, render it, and write the page atomically; returns where and what.
    `extra_benches`: (name, bench record) pairs measured elsewhere, shown beside the run's own.

    The default RUN_DIR/report.html replaces its own earlier page; `out` follows the output rule
    (outputs.py): a new file, or an earlier page with `overwrite`, never inside the run's images.
    """
    from edgeclf.report.gather import gather
    from edgeclf.report.render import render

    report = gather(run_dir, extra_bench_dirs, extra_benches)
    path = absolute(out) if out else report.run_dir / REPORT_FILE
    overwrite = overwrite or not out
    if not path.parent.is_dir():
        raise UsageError(f"the folder {path.parent} does not exist", "create it first or choose another --out")
    check_file_output(path, REPORT, overwrite, report.data_roots)  # before the work
    # ASCII with character references: the same bytes whatever the locale's encoding.
    page = render(report).encode("ascii", "xmlcharrefreplace").decode("ascii")
    publish_file(path, page, REPORT, overwrite, report.data_roots)
    return {
        "path": str(path),
        "bytes": len(page),
        "run_dir": str(report.run_dir),
        "artefacts": [e["name"] for e in report.exports],
        "benches": [b["name"] for b in report.benches],
        "problems": report.problems,
    }
