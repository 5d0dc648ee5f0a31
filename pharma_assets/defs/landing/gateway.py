"""The live gateway in the Dagster UI: is live plant data flowing?

``landing/gateway_live`` is an observable source asset: the gateway (``pharma-twin
gateway``) lands telemetry chunks into ``landing/telemetry`` on its own; Dagster only
watches it. The ``gateway_health_sensor`` (every 30 s, no run needed) records an
observation with the gateway's health (sources connected, readings/s, lag, disk-buffer
depth, open alarms) and evaluates three checks on it; the same checks can be run by hand
from the asset's page. The gateway is found at ``PHARMA_GATEWAY_URL``.
"""

import dagster as dg

from pharma_assets.gateway.health import fetch_health, gateway_url, judge, summarize

GATEWAY_KEY = dg.AssetKey(["landing", "gateway_live"])
CHECKS = ("gateway_sources_connected", "gateway_lag", "gateway_buffer")


def _metadata(s: dict | None) -> dict:
    if s is None:
        return {"reachable": False, "url": gateway_url()}
    md = {k: v for k, v in s.items() if k != "disconnected"}
    md["disconnected"] = ", ".join(s["disconnected"]) or "none"
    return {"reachable": True, "url": gateway_url(), **md}


@dg.observable_source_asset(
    key=GATEWAY_KEY,
    group_name="landing",
    tags={"dagster/kind/opcua": "", "dagster/kind/mqtt": "", "dagster/kind/modbus": ""},
    description="Live plant data through the gateway (OPC UA, MQTT Sparkplug B, Modbus TCP): "
    "sources connected, readings/s, lag and the disk buffer before the landing zone.",
)
def gateway_live() -> dg.ObserveResult:
    s = (lambda h: summarize(h) if h else None)(fetch_health())
    version = "unreachable" if s is None else f"landed-{s['landed']}"
    return dg.ObserveResult(data_version=dg.DataVersion(version), metadata=_metadata(s))


def _check(name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=GATEWAY_KEY,
        name=name,
        blocking=False,
        description=f"Live gateway health: {name.removeprefix('gateway_')}",
    )
    def _fn() -> dg.AssetCheckResult:
        h = fetch_health()
        s = summarize(h) if h else None
        j = next(x for x in judge(s) if x.name == name)
        return dg.AssetCheckResult(
            passed=j.passed,
            severity=dg.AssetCheckSeverity.WARN,
            description=j.description,
            metadata=_metadata(s),
        )

    return _fn


gateway_checks = [_check(n) for n in CHECKS]


@dg.sensor(
    name="gateway_health_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records the live gateway's health on landing/gateway_live every 30 s (an "
    "observation and three check evaluations; no run is launched).",
)
def gateway_health_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    h = fetch_health()
    s = summarize(h) if h else None
    md = _metadata(s)
    events: list = [dg.AssetObservation(asset_key=GATEWAY_KEY, metadata=md)]
    for j in judge(s):
        events.append(
            dg.AssetCheckEvaluation(
                asset_key=GATEWAY_KEY,
                check_name=j.name,
                passed=j.passed,
                severity=dg.AssetCheckSeverity.WARN,
                description=j.description,
                metadata=md,
            )
        )
    return dg.SensorResult(asset_events=events)
