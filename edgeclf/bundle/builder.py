"""`edgeclf bundle`: an artefact directory in, a self-checking hand-off bundle (folder or .zip) out.

Everything is written to a temp sibling first; the bundle appears under its name only when
complete. An existing output is replaced only with --overwrite and only if it is a bundle
(it carries bundle.json): a folder or file edgeclf did not write is never touched.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from edgeclf import __version__, console
from edgeclf.artefacts import Artefact, write_manifest
from edgeclf.atomic import staged_dir
from edgeclf.outputs import BUNDLE, absolute, carries_format, check_file_output, check_output, is_our_folder, is_regular
from edgeclf.bundle import BUNDLE_FILE, BUNDLE_FORMAT, SUMS_FILE, BundleError, archive, card, code, golden, sums_line
from edgeclf.bundle import raw as raw_golden
from edgeclf.bundle.handoff import HandOff
from edgeclf.errors import DatasetError, ModelError, UsageError
from edgeclf.layout import sha256_file
from edgeclf.pipeline.runs import LABELS_FILE

CARD_FILE = "MODEL_CARD.md"
MARKER_MAX = 1 << 20  # a bundle.json is a few KB


def default_out(artefact_dir: Path) -> Path:
    return artefact_dir.with_name(f"{artefact_dir.name}-bundle")


def is_bundle(path: Path) -> bool:
    """A folder or zip that `edgeclf bundle` wrote: its bundle.json says so (outputs.py), whatever the zip is named."""
    if is_our_folder(path, BUNDLE):
        return True
    if is_regular(path) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zipped:
            root = archive.bundle_root(zipped)
            if root is not None:
                member = zipped.getinfo(f"{root}{BUNDLE_FILE}")
                return member.file_size < MARKER_MAX and carries_format(zipped.read(member), BUNDLE)
    return False


def check_out(out: Path, artefact_dir: Path, overwrite: bool, inputs=()) -> None:
    """The output rule (outputs.py), with the run's image folders as inputs."""
    if out == artefact_dir or artefact_dir in out.parents or out in artefact_dir.parents:
        raise UsageError(f"--out {out} overlaps the artefact directory {artefact_dir}", "write the bundle beside it, e.g. the default <artefact>-bundle")
    if out.suffix.lower() == ".zip":
        check_file_output(out, BUNDLE, overwrite, inputs, ours=is_bundle)
    else:
        check_output(out, BUNDLE, overwrite, inputs=inputs)


def verify_artefact(artefact_dir: Path, manifest: dict) -> None:
    """The artefact's files must still be the ones its manifest recorded."""
    for name, entry in (manifest.get("files") or {}).items():
        path = artefact_dir / name
        if not path.is_file():
            raise ModelError(f"{path} is missing from the artefact", "re-run `edgeclf export`")
        if sha256_file(path) != entry["sha256"]:
            raise ModelError(f"{path} does not match the sha256 in its manifest (changed after export?)", "re-run `edgeclf export`")


def build_bundle(artefact_dir, out=None, count: int = golden.DEFAULT_COUNT, overwrite: bool = False,
                 full_paths: bool = False) -> dict:
    """`full_paths`: keep the trainer's absolute paths in the hand-off files (default: folder names)."""
    artefact_dir = Path(artefact_dir).expanduser().resolve()
    if count < 1:
        raise UsageError(f"--golden {count} must be at least 1", f"e.g. --golden {golden.DEFAULT_COUNT}")
    if not artefact_dir.is_dir():
        raise ModelError(f"{artefact_dir} is not an artefact directory", "pass a folder written by `edgeclf export`")
    artefact = Artefact.open(artefact_dir)
    manifest = artefact.manifest
    out = absolute(out) if out else default_out(artefact_dir)
    as_zip = out.suffix.lower() == ".zip"
    run = golden.source_run(manifest)
    images = [*(run.plan.roots.values() if run.plan is not None else ()), (manifest.get("export") or {}).get("calib_dir")]
    check_out(out, artefact_dir, overwrite, images)
    code.contract(manifest)  # a manifest no template can take is refused before any work
    verify_artefact(artefact_dir, manifest)
    handoff = HandOff(run.info, manifest, paths=[artefact_dir, run.path, *(run.plan.roots.values() if run.plan else ())],
                      full=full_paths)
    chosen = golden.choose(run, manifest, count)
    raw, reference = golden.reference_outputs(artefact.model_path, chosen.split.images)
    spread = golden.kernel_spread(artefact.model_path, chosen.split.images, raw, manifest["output"]["dtype"])
    test = card.test_accuracy(run, artefact.model_path)
    last_mile = app_mistakes(run, artefact, manifest)

    def fill(staging: Path) -> dict:
        files = {path.relative_to(artefact_dir).as_posix(): path for path in artefact.format.model_files(artefact.model_path)}
        for name, path in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staging / name)
        shutil.copyfile(artefact_dir / LABELS_FILE, staging / LABELS_FILE)
        write_manifest(staging, handoff.tree(manifest) | {"labels": manifest["labels"]})
        record = golden.write(staging, chosen, raw, reference, manifest, spread, handoff)
        raw_golden.write(staging, chosen.split, record, manifest, run.resize, last_mile, artefact.model_path)
        written = code.write(staging, manifest, record)
        digests = {name: sha256_file(staging / name) for name in files}
        (staging / CARD_FILE).write_text(
            card.render(manifest, run, record, test, card.device_measurements(run, manifest), digests, handoff, last_mile))
        summary = {
            "format": BUNDLE_FORMAT,
            "created_by": f"edgeclf bundle {__version__}",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "artefact": handoff.text(artefact_dir),
            "model_files": list(files),
            "golden": {k: record[k] for k in ("count", "source", "reference", "tolerance")},
            "raw_golden": {k: record["raw"][k] for k in ("count", "limits", "tolerance")},
            "code": written,
        }
        (staging / BUNDLE_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        write_sums(staging)
        return summary

    if as_zip:
        summary = _write_zip(out, overwrite, fill)
    else:
        with staged_dir(out, BUNDLE_FILE, overwrite=overwrite, inputs=images, input_runs=[artefact_dir]) as staging:
            summary = fill(staging)
    console.info(f"bundle written to {out}")
    return summary | {"path": str(out), "test_accuracy": test}


def app_mistakes(run, artefact: Artefact, manifest: dict) -> dict | None:
    """The manifest's last-mile table (export --last-mile), checked; else measured now."""
    from edgeclf.lastmile import sensitivity

    if manifest.get("last_mile"):
        try:
            return sensitivity.validated(manifest["last_mile"])
        except (ValueError, TypeError, AttributeError) as exc:
            console.warn(f"the manifest's last_mile table is unusable ({exc}); measuring it again")
    try:
        return sensitivity.measure(run, artefact.model_path, manifest["input"]["dtype"])
    except DatasetError as exc:
        console.warn(f"app mistakes not measured: {exc.what}")
        return None


def write_sums(directory: Path) -> None:
    """SHA256SUMS in `sha256sum -c` format, for every file but itself."""
    lines = [sums_line(sha256_file(p), p.relative_to(directory).as_posix())
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != SUMS_FILE]
    (directory / SUMS_FILE).write_text("".join(lines))


def _write_zip(out: Path, overwrite: bool, fill) -> dict:
    """Build the folder in a temp dir, zip it to a temp sibling of `out`, rename into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tempfile.TemporaryDirectory(prefix="edgeclf-bundle-") as work:
            staging = Path(work) / out.stem
            staging.mkdir()
            summary = fill(staging)
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zipped:
                for path in sorted(staging.rglob("*")):
                    if path.is_file():
                        info = zipfile.ZipInfo.from_file(path, f"{out.stem}/{path.relative_to(staging).as_posix()}")
                        with open(path, "rb") as f:
                            zipped.writestr(info, f.read(), zipfile.ZIP_DEFLATED)
        check_out_still_free(out, overwrite)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return summary


def check_out_still_free(out: Path, overwrite: bool) -> None:
    """Re-check just before the rename: something may have appeared at `out` meanwhile."""
    if (out.exists() or out.is_symlink()) and (not overwrite or not is_bundle(out)):
        raise BundleError(f"{out} appeared while the bundle was being built", "choose another --out")
