"""Where the lake and the landing zone are, per environment.

local (default): ``PHARMA_LAKE_URI`` (default ``./lakehouse``), ``PHARMA_LANDING_DIR``
(default ``./landing``). production: ``PHARMA_LAKE_URI=s3://bucket/prefix`` (or az://,
gs://) with the object-store credentials in the usual ``AWS_*``/``AZURE_*``/``GOOGLE_*``
variables; see docs/deployment_guide.md.
"""

from __future__ import annotations

import os

import dagster as dg

from pharma_assets.lake.specs import CppSpec, load_spec
from pharma_assets.lake.storage import DEFAULT_LAKE_URI, Lake, lake_uri_from_env


class LakehouseResource(dg.ConfigurableResource):
    """The lake root, the landing folder and the CPP spec file the pipeline uses."""

    lake_uri: str = DEFAULT_LAKE_URI
    landing_dir: str = "landing"
    spec_path: str | None = None

    @classmethod
    def from_env(cls) -> LakehouseResource:
        return cls(
            lake_uri=lake_uri_from_env(),
            landing_dir=os.environ.get("PHARMA_LANDING_DIR", "landing"),
            spec_path=os.environ.get("PHARMA_CPP_SPEC") or None,
        )

    def lake(self) -> Lake:
        return Lake.from_env(self.lake_uri)

    def spec(self) -> CppSpec:
        return load_spec(self.spec_path)
