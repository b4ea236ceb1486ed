"""Metrics over experiment results: reference-based and diversity image metrics, text-image alignment
scored by local models, and embedding statistics. Sits above the results store; nothing below imports it."""
