"""What every command line of the package shares: the one-line error and the path checks.

Below the app CLI (``pharma_assets.cli``) and the package CLIs (compliance, gateway), so that
those can use it without importing the app.
"""

from __future__ import annotations

from pathlib import Path

from .lake.storage import Lake


class CliError(Exception):
    """An expected failure of a command: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def existing_dir(path: Path | str, what: str) -> Path:
    """``path`` if it is an existing folder, else a one-line CliError naming it."""
    p = Path(path)
    if not p.exists():
        raise CliError(f"{what} {p} does not exist")
    if not p.is_dir():
        raise CliError(f"{what} {p} is not a folder")
    return p


def existing_file(path: Path | str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{what} {p} {'is not a file' if p.exists() else 'does not exist'}")
    return p


def check_lake(lake: str | Lake) -> None:
    """Refuse a local lake root that does not exist (object-store lakes are not checked)."""
    lk = lake if isinstance(lake, Lake) else Lake.at(lake)
    if lk.is_local:
        existing_dir(lake if isinstance(lake, str) else lk.root, "lake")
