"""graft's graph layer: the DuckDB store, ingestion, snapshots, semcons, focus and provenance."""
