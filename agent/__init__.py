"""otel-sidecar: an OTLP agent that runs beside LLM-orchestrator processes."""

__version__ = "0.1.0"
