"""The agent's own telemetry: logs, self-metrics and the admin endpoint."""
