"""deployctl: the production release checklist as one gated, auditable command."""

__version__ = "0.1.0"
