"""Helpers for tests/ and bench/: a project copy to run stages in, and run comparisons."""
