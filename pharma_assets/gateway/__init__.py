"""Live plant connectivity: protocol clients -> canonical readings -> hot store + landing.

Plain Python (no Dagster or Streamlit). ``core.Gateway`` is the shared ingest path;
``hotstore`` keeps latest values and rolling windows (in process or in Redis);
``coldpath`` turns readings into landing telemetry chunks exactly once; ``protocols``
holds the MQTT Sparkplug B, OPC UA and Modbus TCP clients and the twin's servers.
See docs/gateway.md.
"""
