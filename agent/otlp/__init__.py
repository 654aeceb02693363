"""OTLP message helpers shared by receivers, processors and exporters."""
