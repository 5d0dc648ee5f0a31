"""Session-wide test settings.

Tests that run `pharma-twin pipeline` or a Dagster job also write the GxP audit trail, whose
key and anchor live outside the lake (``PHARMA_GXP_HOME``, default ``~/.config/pharma-twin``).
The whole session gets a private folder so no test touches the user's real key or anchor;
the compliance tests narrow it further to one folder per test.
"""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PHARMA_GXP_HOME", tempfile.mkdtemp(prefix="pharma_gxp_test_"))
