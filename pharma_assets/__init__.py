"""pharma-twin: a digital twin platform for biopharmaceutical manufacturing."""
