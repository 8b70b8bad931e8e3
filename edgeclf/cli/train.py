"""`edgeclf train`: fine-tune a backbone on an image folder into a run directory."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options, tables
from edgeclf.errors import UsageError
from edgeclf.pipeline.backbones import BACKBONES
from edgeclf.pipeline.config import EMBEDDING_MODES, LEAK_POLICIES, TrainConfig
from edgeclf.pipeline.resize import DEFAULT as DEFAULT_RESIZE, KERNELS


@click.command("train")
@click.argument("data_dir", required=False, type=options.folder)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to create.")
@click.option("--arch", default="mobilenetv2", show_default=True, type=click.Choice(list(BACKBONES), case_sensitive=False))
@click.option("--weights", default="imagenet", show_default=True, help="'imagenet' (Keras download), 'none', or a backbone weights file (.h5/.keras).")
@click.option("--img-size", type=int, help="Square input size in pixels [default: the backbone's, 224].")
@click.option("--alpha", default=1.0, show_default=True, type=float, help="MobileNetV2 width multiplier.")
@click.option("--val-split", default=0.2, show_default=True, type=float, help="Fraction of DATA_DIR held out for validation (stratified, seeded).")
@click.option("--val-dir", type=options.folder, help="Explicit validation folder (instead of --val-split).")
@click.option("--test-dir", type=options.folder, help="Test folder, scored once at the end.")
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--head-epochs", default=5, show_default=True, type=int, help="Stage (a): epochs training only the head.")
@click.option("--fine-tune-epochs", default=15, show_default=True, type=int, help="Stage (b): epochs fine-tuning the backbone's top.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Head learning rate.")
@click.option("--fine-tune-lr", type=float, help="Fine-tune learning rate [default: lr / 20].")
@click.option("--fine-tune-at", type=int, help="First backbone layer index to unfreeze in stage (b) [default: per backbone].")
@click.option("--dropout", default=0.4, show_default=True, type=float)
@click.option("--label-smoothing", default=0.1, show_default=True, type=float)
@click.option("--augment/--no-augment", default=True, show_default=True, help="Random flip, rotation, zoom and contrast.")
@click.option("--class-weight", default="none", show_default=True, type=click.Choice(["none", "auto"]), help="'auto' weights classes by inverse frequency.")
@click.option("--patience", default=5, show_default=True, type=int, help="Early-stopping patience (epochs without val_loss improvement).")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--resize", default=DEFAULT_RESIZE, show_default=True, type=click.Choice(list(KERNELS)),
              help="Resize kernel for every image of the run (training, evaluation, calibration, golden vectors): "
                   "train with the one your app uses, e.g. android for Bitmap.createScaledBitmap.")
@options.cache
@options.distribute
@click.option("--leaks", default="warn", show_default=True, type=click.Choice(LEAK_POLICIES),
              help="Val/test images that duplicate training images: warn (score both ways), exclude them from scoring, or refuse to train.")
@click.option("--audit-embeddings", default="auto", show_default=True, type=click.Choice(EMBEDDING_MODES),
              help="The data audit's embedding checks (near duplicates, likely label errors); auto: when they cost under 10% of training.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run at --out from its last epoch (with the --cache and --distribute given now).")
@click.option("--restart", is_flag=True, help="Discard the interrupted run at --out (its .partial folder) and start again.")
@options.overwrite
@options.json_output
def command(data_dir, out, resume, restart, overwrite, as_json, **settings):
    """Fine-tune a backbone on DATA_DIR (one subfolder per class) into the run directory --out."""
    from edgeclf.jobs import train as training

    if resume and restart:
        raise UsageError("--resume and --restart exclude each other", "pass --resume to continue, or --restart to start again")
    if resume:
        result = training.resume(out, overwrite=overwrite, cache=settings["cache"], strategy=settings["distribute"])
    else:
        if data_dir is None:
            raise UsageError("DATA_DIR is missing", "pass the training image folder, or --resume")
        result = training.train(TrainConfig(data_dir=data_dir, out=out, **settings), overwrite=overwrite, restart=restart)
    if as_json:
        console.print_json(result)
        return
    tables.metrics_table(f"{result['arch']} @ {result['img_size']}px", result["metrics"])
    for split, f in ((result.get("audit") or {}).get("figures_without_leaks") or {}).items():
        console.warn(f"{split} without its {f['leaked']} leaked image(s): top-1 {console.pct(f['top1_without'])} on "
                     f"{f['n_without']} images (as given: {console.pct(f['top1'])} on {f['n_images']})")
    timing = result["timing"]
    console.info(
        "time: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in timing.items() if k.endswith("_s"))
    )
    console.out.print(f"run directory: {result['run_dir']}")
