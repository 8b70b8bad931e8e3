"""How hand-off files name the trainer's paths: by folder name, unless the user asks for full ones.

A bundle goes to another team; `/home/<user>/...` tells them nothing they need and something
they should not have. Every absolute path recorded in the run, the manifest or the golden
record is a root; in any text bound for the bundle a root becomes its folder name (so a file
below it keeps its path relative to that folder), and the home folder becomes `~`.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath


def _absolute_strings(record):
    if isinstance(record, dict):
        for value in record.values():
            yield from _absolute_strings(value)
    elif isinstance(record, (list, tuple)):
        for value in record:
            yield from _absolute_strings(value)
    elif isinstance(record, str) and record.startswith("/") and "\n" not in record:
        yield record


class HandOff:
    def __init__(self, *records, paths=(), full: bool = False):
        self.full = full
        roots = {str(PurePosixPath(p)) for p in [*paths, *(s for r in records for s in _absolute_strings(r))]}
        names = {root: PurePosixPath(root).name for root in roots if len(PurePosixPath(root).parts) > 1}
        home = str(Path.home())
        if len(PurePosixPath(home).parts) > 1:
            names.setdefault(home, "~")
        # Longest first, so /a/b/run becomes "run" before /a/b could claim it; a root matches
        # only as a whole path component (not /a/bc for /a/b).
        ordered = sorted(names, key=len, reverse=True)
        self._names = names
        self._pattern = re.compile("|".join(f"{re.escape(r)}(?![\\w-])" for r in ordered)) if ordered else None

    def text(self, value) -> str:
        text = str(value)
        if self.full or self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self._names[m.group(0)], text)

    def tree(self, record):
        """A JSON-like record with every string passed through `text`."""
        if isinstance(record, dict):
            return {key: self.tree(value) for key, value in record.items()}
        if isinstance(record, list):
            return [self.tree(value) for value in record]
        return self.text(record) if isinstance(record, str) else record
