"""stella-build: reproducible vulnerability-evidence exports (see engine/ and rules/)."""
