"""Tables and figures, aggregated from the per-run metric files only (one computation path)."""
