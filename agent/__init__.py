"""otel-sidecar: an OTLP agent that runs beside LLM-orchestrator processes."""

import os

# gRPC's core writes lines of its own to stderr below ERROR (a failed TLS handshake at every reconnect, every
# few seconds, outside the agent's JSON log lines); what matters of them reaches the agent as call statuses,
# which it logs. Set before grpc is first imported; GRPC_VERBOSITY in the environment still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

__version__ = "0.1.0"
