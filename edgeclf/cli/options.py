"""Options shared by several commands, defined once."""
from __future__ import annotations

import click

json_output = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary on stdout.")
overwrite = click.option("--overwrite", is_flag=True, help="Replace an existing output directory (only once the new one is complete).")
# Paths are checked by the config records, which give one clear line instead of click's usage dump.
folder = click.Path(path_type=str)
