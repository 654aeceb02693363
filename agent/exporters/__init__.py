"""Exporters: the ends of pipelines."""
