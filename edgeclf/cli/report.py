"""`edgeclf report`: one self-contained HTML page for a run (not to be confused with cli/tables.py's tables)."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options


@click.command("report")
@click.argument("run_dir", type=options.folder)
@click.option("--out", type=click.Path(dir_okay=False), help="HTML file to write [default: RUN_DIR/report.html].")
@click.option("--open", "open_page", is_flag=True, help="Open the page in the default browser.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier page at --out (only a page edgeclf wrote).")
@options.json_output
def command(run_dir, out, open_page, overwrite, as_json):
    """Write one HTML page showing RUN_DIR: dataset, training, results, artefacts and devices."""
    from edgeclf.report import write_report

    written = write_report(run_dir, out, overwrite=overwrite)
    if as_json:
        console.print_json(written)
    else:
        for problem in written["problems"]:
            console.warn(problem)
        console.out.print(f"report: {written['path']} ({written['bytes'] / 1e6:.2f} MB)")
    if open_page:
        import webbrowser
        from pathlib import Path

        webbrowser.open(Path(written["path"]).as_uri())
