"""Explainer backends (the protocol is daemon/explain/backends/__init__.py of engineer 12b)."""
