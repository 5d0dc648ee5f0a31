"""Discovering what has landed: files, where they belong, and when they arrived.

The layout is fixed by the landing writers (pharma_assets.twin.landing)::

    telemetry/<unit>/<batch>/<file>    mes/<unit>/<batch>/<file>    lims/<unit>/<batch>/<file>
    cmms/<unit>/<file>

A file anywhere else is *unroutable*: it is still discovered, and the bronze layer
quarantines it with the reason, so nothing landed is ever invisible. Hidden files (names
starting with a dot, such as the writers' ``.name.tmp``) are in-flight and ignored.

Arrival time is the inode change time (``st_ctime_ns``): renames and copies set it, and,
unlike the modification time, tools such as ``cp -p`` or ``rsync -t`` cannot set it into
the past, so a high-water mark over it never misses a late delivery of an old file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BATCH_SOURCES = ("telemetry", "mes", "lims")
UNIT_SOURCES = ("cmms",)
SOURCES = (*BATCH_SOURCES, *UNIT_SOURCES)


@dataclass(frozen=True)
class LandedFile:
    source: str  # telemetry | mes | lims | cmms | unroutable
    rel: str  # path relative to the landing root, with forward slashes
    unit_id: str | None
    batch_id: str | None
    size: int
    arrived_ns: int

    def path(self, root: str | Path) -> Path:
        return Path(root) / self.rel


def _walk(root: str) -> Iterator[os.DirEntry[str]]:
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    yield e


def classify(rel: str) -> tuple[str, str | None, str | None]:
    """(source, unit_id, batch_id) of a landing-relative path; source 'unroutable' if odd."""
    parts = rel.split("/")
    if len(parts) == 4 and parts[0] in BATCH_SOURCES:
        return parts[0], parts[1], parts[2]
    if len(parts) == 3 and parts[0] in UNIT_SOURCES:
        return parts[0], parts[1], None
    return "unroutable", None, None


def scan_landing(root: str | Path, since_ns: int = 0) -> list[LandedFile]:
    """Every landed file that arrived at or after ``since_ns``, in arrival order."""
    root = str(Path(root))
    if not os.path.isdir(root):
        return []
    out = []
    for e in _walk(root):
        st = e.stat(follow_symlinks=False)
        if st.st_ctime_ns < since_ns:
            continue
        rel = os.path.relpath(e.path, root).replace(os.sep, "/")
        source, unit, batch = classify(rel)
        out.append(LandedFile(source, rel, unit, batch, st.st_size, st.st_ctime_ns))
    out.sort(key=lambda f: (f.arrived_ns, f.rel))
    return out


def files_for_batch(root: str | Path, source: str, batch_id: str) -> list[LandedFile]:
    """The landed files of one source for one batch (any unit folder), in name order."""
    root = Path(root)
    out: list[LandedFile] = []
    base = root / source
    if not base.is_dir():
        return out
    for unit_dir in base.iterdir():
        d = unit_dir / batch_id
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(".") or not p.is_file():
                continue
            st = p.stat()
            rel = p.relative_to(root).as_posix()
            out.append(LandedFile(source, rel, unit_dir.name, batch_id, st.st_size, st.st_ctime_ns))
    out.sort(key=lambda f: f.rel)
    return out


def files_for_source(root: str | Path, source: str) -> list[LandedFile]:
    """Every landed file of an unpartitioned source (cmms) or every unroutable file."""
    if source == "unroutable":
        return [f for f in scan_landing(root) if f.source == "unroutable"]
    base = Path(root) / source
    out = []
    if base.is_dir():
        for e in _walk(str(base)):
            rel = Path(e.path).relative_to(root).as_posix()
            src, unit, batch = classify(rel)
            if src == source:
                st = e.stat()
                out.append(LandedFile(src, rel, unit, batch, st.st_size, st.st_ctime_ns))
    out.sort(key=lambda f: f.rel)
    return out
