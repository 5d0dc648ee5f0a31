"""The code location loads without the model libraries (issue 17: every Dagster run starts a
new Python process that loads the whole code location, and under load that start-up was most
of the 31-41 s between a run's creation and its first step). The libraries that fit models
(scikit-learn, SciPy, XGBoost, MLflow) and the UI/protocol libraries are imported only
inside the functions that use them."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sklearn", "scipy", "xgboost", "mlflow", "streamlit", "zxcvbn", "asyncua", "plotly")


def test_loading_the_definitions_imports_no_model_library() -> None:
    code = (
        "import json, sys\n"
        "import pharma_assets.definitions as d\n"
        "defs = d.defs()\n"
        "assert defs.resolve_asset_graph().get_all_asset_keys()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
