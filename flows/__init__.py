"""Prefect orchestration of the advmix DVC pipeline."""
