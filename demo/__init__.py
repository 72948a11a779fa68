"""Bundled demo web app used by deployctl's demo and tests."""
