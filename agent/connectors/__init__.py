"""Connectors: components that end one pipeline and feed another (``spanmetrics``: traces in, metrics out).

A connector is an exporter in its input pipelines and a receiver of its output pipelines; the graph hands it
the consumers of every pipeline that names it as a receiver (see :class:`agent.component.Factory`).
"""
