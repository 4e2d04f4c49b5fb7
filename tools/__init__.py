"""Tools around the pipeline that are not DVC stages: changing them re-runs nothing."""
