"""The process twin: plant configuration, mechanistic bioreactor model, equipment, faults."""
