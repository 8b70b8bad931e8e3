"""`edgeclf audit`: duplicates, leaks, label conflicts and odd images in an image folder, before training."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options
from edgeclf.pipeline.backbones import BACKBONES


@click.command("audit")
@click.argument("data_dir", type=options.folder)
@click.option("--val-dir", type=options.folder, help="Validation folder, checked for copies of DATA_DIR's images.")
@click.option("--test-dir", type=options.folder, help="Test folder, checked for copies of DATA_DIR's images.")
@click.option("--out", type=click.Path(file_okay=False), help="Folder to write audit.json and audit.html (thumbnails side by side).")
@click.option("--img-size", default=224, show_default=True, type=int, help="The model input: smaller images are flagged as upscaled.")
@click.option("--embeddings", default="on", show_default=True, type=click.Choice(["on", "off"]),
              help="Backbone features for near duplicates a hash misses and for likely label errors.")
@click.option("--arch", default="mobilenetv2", show_default=True, type=click.Choice(list(BACKBONES), case_sensitive=False))
@click.option("--weights", default="imagenet", show_default=True, help="Backbone weights for the embeddings: 'imagenet' or a file.")
@click.option("--alpha", default=1.0, show_default=True, type=float, help="MobileNetV2 width multiplier.")
@click.option("--seed", default=0, show_default=True, type=int, help="Fixes the label probe's folds.")
@options.overwrite
@options.json_output
def command(data_dir, val_dir, test_dir, out, as_json, **settings):
    """Audit DATA_DIR (one subfolder per class) and its val/test folders; never changes a file."""
    from edgeclf.jobs import audit

    result = audit.audit_folders(data_dir, val_dir, test_dir, out=out, **settings)
    if as_json:
        console.print_json(result)
        return
    audit.findings_table(result)
    audit.print_summary(result)
    if out:
        console.out.print(f"audit folder: {result['summary']['out']}")
