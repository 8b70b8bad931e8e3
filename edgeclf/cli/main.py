"""The `edgeclf` command group and its single error boundary."""
from __future__ import annotations

import signal
import sys
import traceback
import warnings

import click

from edgeclf import __version__, tfenv
from edgeclf.errors import EdgeclfError, first_line, os_error_message


class EdgeclfGroup(click.Group):
    """Turns every failure into one `error: ...` line; --debug shows the traceback instead."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except EdgeclfError as exc:
            self._fail(ctx, str(exc), exc.exit_code)
        except OSError as exc:  # the file system said no: name the path and what to do about it
            self._fail(ctx, os_error_message(exc), 1)
        except KeyboardInterrupt:
            self._fail(ctx, "interrupted (nothing half-written was left behind)", 130)
        except Exception as exc:  # an unexpected failure still gets one line, not a stack dump
            self._fail(ctx, f"unexpected {type(exc).__name__}: {exc} (rerun with --debug and report it)", 1)

    @staticmethod
    def _fail(ctx: click.Context, message: str, code: int):
        if ctx.obj and ctx.obj.get("debug"):
            traceback.print_exc()
        click.echo(f"error: {first_line(message, limit=2000)}", err=True)
        sys.exit(code)


@click.group(cls=EdgeclfGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgeclf")
@click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
@click.option("--verbose", is_flag=True, help="Show TensorFlow's own log output.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool):
    """Train, quantize, export and verify image classifiers on the device they ship to.

    \b
    Typical flow:
      edgeclf train DATA_DIR --arch mobilenetv2 --out runs/flowers
      edgeclf export runs/flowers --target tflite --quant int8
      edgeclf validate runs/flowers/exports/tflite-int8 --data TEST_DIR
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    tfenv.set_verbose(verbose)
    if not verbose:  # TensorFlow and tfmot warn about their own internals; users cannot act on it
        warnings.filterwarnings("ignore")


def _register() -> None:
    from edgeclf.cli import (audit, bench, bundle, demo, devices, evaluate, export, inspect, optimize, predict, report,
                             run, train, validate)

    for module in (audit, train, optimize, evaluate, predict, export, inspect, validate, bench, report, devices, demo, run):
        cli.add_command(module.command)
    cli.add_command(bundle.command)
    cli.add_command(bundle.check_command)


_register()


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # a SIGTERM cleans up exactly like Ctrl-C: staged dirs go, checkpoints stay


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = cli.main(prog_name="edgeclf", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # bad options: one line, not click's usage dump
        command = exc.ctx.command_path if getattr(exc, "ctx", None) else "edgeclf"
        click.echo(f"error: {exc.format_message()} (see `{command} --help`)", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
