"""`edgeclf predict`: label individual images with a run's model."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options


@click.command("predict")
@click.argument("run_dir", type=options.folder)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(min=1))
@options.json_output
def command(run_dir, images, top_k, as_json):
    """Print the top-k labels and probabilities for each IMAGE."""
    from edgeclf.jobs.evaluate import predict_images, unreadable_error

    results = predict_images(run_dir, images, top_k)
    if as_json:
        console.print_json(results)
    else:
        rows = []
        for r in results:
            if r.get("error"):
                rows.append([r["image"], "unreadable", r["error"]])
                continue
            for rank, (label, p) in enumerate(r["top"]):
                rows.append([r["image"] if rank == 0 else "", label, f"{p:.3f}"])
        console.table(None, ["image", "label", "probability"], rows)
    error = unreadable_error(results)
    if error:  # the readable images are still reported above, but the command did not do all it was asked
        raise error
