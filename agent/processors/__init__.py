"""Processors: pipeline stages between receivers and exporters (``tail_sampling`` …), one package per type."""
