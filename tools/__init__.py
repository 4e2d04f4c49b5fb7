"""Tools that use the pipeline's outputs; not DVC stages, so editing them re-runs nothing."""
