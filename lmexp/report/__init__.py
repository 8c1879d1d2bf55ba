"""Reports on finished runs: the local HTML page, the scaling study, the W&B dashboard."""
