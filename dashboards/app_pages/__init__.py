"""Page registry of the dashboards app.

``PAGES`` lists the operations pages in navigation order: (file in this folder, title,
icon, url_path). ``qa_pages()`` adds the "Quality & compliance" section: every
``qa_*.py`` file in this folder becomes a page, in file-name order. A QA page may set a
module-level string ``PAGE_TITLE = "..."`` (and ``PAGE_ICON = ":material/...:"``); it is
read from the source without importing the page, else the title comes from the file name
(``qa_audit_trail.py`` -> "Audit trail"). The url path is the file stem
(``/qa_audit_trail``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPERATIONS_SECTION = "Operations"
QA_SECTION = "Quality & compliance"


@dataclass(frozen=True)
class PageEntry:
    """One navigation entry."""

    file: str
    title: str
    icon: str
    url_path: str
    folder: Path = HERE

    @property
    def path(self) -> Path:
        return self.folder / self.file


PAGES: tuple[PageEntry, ...] = (
    PageEntry("overview.py", "Plant overview", ":material/factory:", "overview"),
    PageEntry("live.py", "Live", ":material/sensors:", "live"),
    PageEntry("bioreactor.py", "Bioreactor", ":material/science:", "bioreactor"),
    PageEntry("batch_quality.py", "Batch quality", ":material/fact_check:", "batch_quality"),
    PageEntry("equipment.py", "Equipment health", ":material/build:", "equipment"),
    PageEntry(
        "monitoring.py", "Contamination & monitoring", ":material/monitor_heart:", "monitoring"
    ),
    PageEntry("models.py", "Models", ":material/model_training:", "models"),
    PageEntry("whatif.py", "What-if & optimisation", ":material/tune:", "whatif"),
)


def _literal(tree: ast.Module, name: str) -> str | None:
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    return None


@lru_cache(maxsize=64)
def _entry(path: Path, _mtime_ns: int) -> PageEntry:
    try:
        tree = ast.parse(path.read_text())
    except SyntaxError:
        tree = ast.Module(body=[], type_ignores=[])  # the page itself will show the error
    title = (
        _literal(tree, "PAGE_TITLE") or path.stem.removeprefix("qa_").replace("_", " ").capitalize()
    )
    icon = _literal(tree, "PAGE_ICON") or ":material/verified:"
    return PageEntry(path.name, title, icon, path.stem, path.parent)


def qa_pages(folder: Path = HERE) -> list[PageEntry]:
    """The ``qa_*.py`` pages present in ``folder``, in file-name order (parsed once per
    file version: the app calls this on every rerun)."""
    return [_entry(f, f.stat().st_mtime_ns) for f in sorted(folder.glob("qa_*.py"))]
