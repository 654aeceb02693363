"""Pipelines: wiring receivers, processors, connectors and exporters into a graph with a lifecycle."""
