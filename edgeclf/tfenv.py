"""Load TensorFlow once, quietly unless --verbose, and always as tf-keras (Keras 2)."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings

_verbose = False


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def is_verbose() -> bool:
    return _verbose


@contextlib.contextmanager
def native_stderr_silenced():
    """Hide what C++ code writes straight to fd 2 (absl/oneDNN/MLIR noise), unless --verbose."""
    if _verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def quiet_tools(*loggers: str, level: int = logging.CRITICAL):
    """Keep conversion tools' chatter (stdout prints, logging, warnings, C++ on fd 2) out of the way.

    stdout must stay clean for --json. With --verbose everything goes to stderr instead.
    """
    if _verbose:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(level)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, previous in saved:
            logger.setLevel(previous)


def tf():
    """Import TensorFlow with the start-up log noise hidden."""
    if "tensorflow" not in sys.modules:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        with native_stderr_silenced():
            import tensorflow

            # Device discovery logs CUDA probing errors on CPU-only machines; do it now, silenced.
            tensorflow.config.list_physical_devices()
        logging.getLogger("tensorflow").setLevel(logging.DEBUG if _verbose else logging.ERROR)
        try:
            import absl.logging

            absl.logging.set_verbosity(absl.logging.INFO if _verbose else absl.logging.ERROR)
        except ImportError:  # absl ships with TensorFlow; harmless if it ever does not
            pass
    import tensorflow

    return tensorflow


def keras():
    tf()
    import tf_keras

    # Keras prints download notices to stdout, which would corrupt --json output.
    tf_keras.utils.disable_interactive_logging()
    return tf_keras


def installed_version(dist: str) -> str | None:
    """The installed version of a distribution, or None."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions(*dists: str) -> dict[str, str | None]:
    """Versions of the tools that shape a model, for run.json and manifests; `dists` for just those."""
    if dists:
        return {dist: installed_version(dist) for dist in dists}
    import edgeclf

    found = {"edgeclf": edgeclf.__version__, "python": sys.version.split()[0]}
    return found | versions("tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert", "numpy", "pillow")
