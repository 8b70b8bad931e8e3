"""The EdgeclfError family. Every message says what went wrong and what to change."""


def first_line(exc_or_text, limit: int = 300) -> str:
    """The first non-blank line of an exception's message (tools put the reason there), shortened."""
    text = str(exc_or_text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        return lines[0][:limit]
    return type(exc_or_text).__name__ if isinstance(exc_or_text, BaseException) else "failed"


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
