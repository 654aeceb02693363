"""Machinery shared by exporters: bounded sending queue and its workers."""
