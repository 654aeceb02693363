"""Receivers: where data enters the agent."""
