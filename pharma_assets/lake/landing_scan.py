"""Discovering what has landed: files, where they belong, and when they arrived.

The layout is fixed by the landing writers (pharma_assets.twin.landing)::

    telemetry/<unit>/<batch>/<file>    mes/<unit>/<batch>/<file>    lims/<unit>/<batch>/<file>
    cmms/<unit>/<file>    coa/<site>/<file>    site_tags/<site>.yaml (configuration)

A file anywhere else is *unroutable*: it is still discovered, and the bronze layer
quarantines it with the reason, so nothing landed is ever invisible. Hidden files (names
starting with a dot, such as the writers' ``.name.tmp``) are in-flight and ignored.

The routing rules (docs/data_model.md §1, "Bad input"): folder ids must match the documented
id patterns (``invalid_unit_id``, ``invalid_batch_id``: no blanks, tabs or newlines that
would reach partition keys), a batch named ``<unit>-B<nnnn>`` must sit in its own unit's
folder (``misrouted_batch``), and a symbolic link is never followed (``symlink``: the link
itself is the landed entry, quarantined unread). Such entries are unroutable, with
``issue`` holding the reason.

Arrival time is the inode change time (``st_ctime_ns``): renames and copies set it, and,
unlike the modification time, tools such as ``cp -p`` or ``rsync -t`` cannot set it into
the past, so a high-water mark over it never misses a late delivery of an old file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BATCH_SOURCES = ("telemetry", "mes", "lims")
UNIT_SOURCES = ("cmms", "coa")  # coa/<site_id>/<file>: LIMS certificates of analysis
SOURCES = (*BATCH_SOURCES, *UNIT_SOURCES)
# docs/data_model.md §1, Identifiers
UNIT_ID = re.compile(r"[A-Za-z0-9_]+")
BATCH_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
#: site tag declarations (``pharma_assets.process.site_tags``): read with the spec, not ingested
CONFIG_PREFIX = "site_tags/"
UNIT_BATCH_ID = re.compile(r"([A-Za-z0-9_]+)-B[0-9]{4,}")  # <unit_id>-B<seq:04d>


@dataclass(frozen=True)
class LandedFile:
    source: str  # telemetry | mes | lims | cmms | unroutable
    rel: str  # path relative to the landing root, with forward slashes
    unit_id: str | None
    batch_id: str | None
    size: int
    arrived_ns: int
    issue: str | None = None  # why an unroutable entry is unroutable (a reason code)
    issue_detail: str | None = None
    is_link: bool = False  # a symbolic link: never followed, never read

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
                if e.is_symlink():
                    yield e  # reported (never followed): bronze quarantines the link
                elif e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    yield e


def classify(rel: str) -> tuple[str, str | None, str | None]:
    """(source, unit_id, batch_id) of a landing-relative path; source 'unroutable' if odd."""
    source, unit, batch, _ = route(rel)
    return source, unit, batch


def route(
    rel: str, is_link: bool = False
) -> tuple[str, str | None, str | None, tuple[str, str] | None]:
    """(source, unit_id, batch_id, (reason, detail) or None) of a landing-relative path."""
    if is_link:
        return (
            "unroutable",
            None,
            None,
            (
                "symlink",
                f"{rel} is a symbolic link; links are never followed: land the file itself",
            ),
        )
    parts = rel.split("/")
    if (len(parts) == 4 and parts[0] in BATCH_SOURCES) or (
        len(parts) == 3 and parts[0] in UNIT_SOURCES
    ):
        unit = parts[1]
        if not UNIT_ID.fullmatch(unit):
            return (
                "unroutable",
                None,
                None,
                (
                    "invalid_unit_id",
                    f"unit folder {unit!r} of {rel!r} does not match [A-Za-z0-9_]+",
                ),
            )
        if len(parts) == 3:
            return parts[0], unit, None, None
        batch = parts[2]
        if not BATCH_ID.fullmatch(batch):
            return (
                "unroutable",
                None,
                None,
                (
                    "invalid_batch_id",
                    f"batch folder {batch!r} of {rel!r} does not match "
                    f"{BATCH_ID.pattern} (docs/data_model.md §1)",
                ),
            )
        m = UNIT_BATCH_ID.fullmatch(batch)
        if m and m.group(1) != unit:
            return (
                "unroutable",
                None,
                None,
                (
                    "misrouted_batch",
                    f"batch {batch} belongs to unit {m.group(1)} but landed under "
                    f"{parts[0]}/{unit}/",
                ),
            )
        return parts[0], unit, batch, None
    return "unroutable", None, None, None


def _landed(e: os.DirEntry[str] | Path, rel: str) -> LandedFile:
    link = e.is_symlink()
    st = e.stat(follow_symlinks=False) if isinstance(e, os.DirEntry) else e.lstat()
    source, unit, batch, issue = route(rel, link)
    return LandedFile(
        source,
        rel,
        unit,
        batch,
        st.st_size,
        st.st_ctime_ns,
        issue[0] if issue else None,
        issue[1] if issue else None,
        link,
    )


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
        if rel.startswith(CONFIG_PREFIX):
            continue  # the importer's site tag declarations: configuration, not landed data
        out.append(_landed(e, rel))
    out.sort(key=lambda f: (f.arrived_ns, f.rel))
    return out


def files_for_batch(root: str | Path, source: str, batch_id: str) -> list[LandedFile]:
    """The landed files of one source for one batch (any unit folder), in name order."""
    root = Path(root)
    out: list[LandedFile] = []
    base = root / source
    if base.is_symlink() or not base.is_dir():  # a linked source folder is never followed
        return out
    for unit_dir in base.iterdir():
        d = unit_dir / batch_id
        # links (to folders or files) are unroutable entries of scan_landing, never followed
        if unit_dir.is_symlink() or d.is_symlink() or not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(".") or p.is_symlink() or not p.is_file():
                continue
            f = _landed(p, p.relative_to(root).as_posix())
            if f.source == source:
                out.append(f)
    out.sort(key=lambda f: f.rel)
    return out


def files_for_source(root: str | Path, source: str) -> list[LandedFile]:
    """Every landed file of an unpartitioned source (cmms) or every unroutable file."""
    if source == "unroutable":
        return [f for f in scan_landing(root) if f.source == "unroutable"]
    base = Path(root) / source
    out = []
    if base.is_dir() and not base.is_symlink():
        for e in _walk(str(base)):
            f = _landed(e, Path(e.path).relative_to(root).as_posix())
            if f.source == source:
                out.append(f)
    out.sort(key=lambda f: f.rel)
    return out
