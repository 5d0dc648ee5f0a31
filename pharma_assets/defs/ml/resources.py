"""Where the ML group finds MLflow and the simulator's ground truth, per environment."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from pharma_assets.ml import quality, registry


class MlResource(dg.ConfigurableResource):
    """MLflow tracking URI (None: ``registry.tracking_uri()``, i.e. ``PHARMA_MLFLOW_URI`` or
    SQLite under ``.state/mlflow``) and the ground-truth folder used ONLY for evaluation."""

    mlflow_uri: str | None = None
    ground_truth_dir: str = "ground_truth"
    pdm_trees: int = 150  # random forest size (smaller in tests)
    quality_trees: int = 300  # boosting rounds per quality model
    # the model kinds each quality target x horizon chooses from (comma-separated names of
    # quality.MODEL_KINDS; empty: all five, the product default). Fewer kinds train faster:
    # the time grows with the boosted-tree kinds among them (PHARMA_QUALITY_MODEL_KINDS)
    quality_model_kinds: str = ""
    # the elastic net's cross-validated search of a unit class on generic features
    # (``<folds>:<l1 ratio>,...``; empty: 5 folds x 4 ratios, the product default). A smaller
    # search trains faster (PHARMA_QUALITY_ENET_SEARCH)
    quality_enet_search: str = ""
    # MSPC reference (good) batches a process engineer names: comma-separated ids or the path
    # of a file with one id per line; empty: the site's right-first-time rule decides
    reference_batches: str = ""

    @classmethod
    def from_env(cls) -> MlResource:
        return cls(
            mlflow_uri=os.environ.get("PHARMA_MLFLOW_URI") or None,
            ground_truth_dir=os.environ.get("PHARMA_GROUND_TRUTH_DIR", "ground_truth"),
            reference_batches=os.environ.get("PHARMA_REFERENCE_BATCHES", ""),
            quality_model_kinds=os.environ.get(quality.MODEL_KINDS_ENV, ""),
            quality_enet_search=os.environ.get(quality.ENET_SEARCH_ENV, ""),
        )

    def model_kinds(self) -> tuple[str, ...]:
        """The quality model kinds to choose from (``quality.parse_model_kinds``)."""
        return quality.parse_model_kinds(self.quality_model_kinds)

    def enet_search(self) -> quality.ElasticNetSearch:
        """The elastic net's search (``quality.parse_enet_search``)."""
        return quality.parse_enet_search(self.quality_enet_search)

    def reference(self) -> list[str] | None:
        """The reference batch ids given (None: use right first time)."""
        text = self.reference_batches.strip()
        if not text:
            return None
        p = Path(text)
        if p.is_file():
            text = p.read_text()
        ids = [t.strip().upper() for t in text.replace(",", "\n").splitlines() if t.strip()]
        return [i for i in ids if not i.startswith("#")] or None

    def uri(self) -> str:
        return self.mlflow_uri or registry.tracking_uri()

    def ground_truth(self) -> tuple[Path | None, str]:
        """(folder, note): the folder if it holds fault labels, else None and why not."""
        p = Path(self.ground_truth_dir)
        if (p / "fault_labels.parquet").exists():
            return p, f"evaluated against ground truth in {p}"
        return None, (
            f"ground-truth evaluation skipped: {p.resolve()}/fault_labels.parquet not found "
            "(set PHARMA_GROUND_TRUTH_DIR to the simulator's ground_truth folder)"
        )
