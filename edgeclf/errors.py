"""The EdgeclfError family. Every message says what went wrong and what to change."""
import errno


def first_line(exc_or_text, limit: int = 300) -> str:
    """The first non-blank line of an exception's message (tools put the reason there), shortened."""
    text = str(exc_or_text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        return lines[0][:limit]
    return type(exc_or_text).__name__ if isinstance(exc_or_text, BaseException) else "failed"


def os_error_message(exc: OSError) -> str:
    """`<what> (<what to do>)` for a failure the user can fix in their environment."""
    path = exc.filename
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot access {path} (permission denied: fix its permissions, or choose a writable folder)"
    if exc.errno == errno.EROFS:
        return f"cannot write {path} (read-only file system: choose a writable folder)"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {path}" if path else ""
        return f"disk full{where} (free some space, or choose an output folder on another disk)"
    if exc.errno == errno.ENOENT and path:
        return f"{path} does not exist (check the path)"
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{what}: {path} (check the path and try again)" if path else f"{what} (check the environment and try again)"


def failure_line(exc: Exception) -> str:
    """One line for a failure that ends one stage or one device's job, not the whole command."""
    return os_error_message(exc) if isinstance(exc, OSError) else first_line(exc)


class EdgeclfError(Exception):
    """An expected failure: printed as one line by the CLI, never with a traceback."""

    exit_code = 1

    def __init__(self, what: str, fix: str | None = None):
        self.what = what
        self.fix = fix
        super().__init__(f"{what} ({fix})" if fix else what)


class UsageError(EdgeclfError):
    """Bad options or a bad combination of options."""

    exit_code = 2


class PartialFailure(EdgeclfError):
    """The command ran to its end and wrote its table and files, but some results are failures
    (a device, a format, a golden vector, a pipeline stage). Its own exit code, so that a CI gate
    fails while a device is down and can still tell that from a command that did not run."""

    exit_code = 3


class DatasetError(EdgeclfError):
    """An image folder that cannot be used as given."""


class ModelError(EdgeclfError):
    """A model, run directory or weights file that cannot be used."""


class ExportError(EdgeclfError):
    """A conversion that failed; no artefact was written."""


class DeviceError(EdgeclfError):
    """A target device that cannot be reached or cannot run the model."""


class MissingDependency(EdgeclfError):
    """An optional package that is not installed."""

    def __init__(self, package: str, extra: str):
        super().__init__(f"{package} is not installed", f"pip install 'edgeclf[{extra}]'")
