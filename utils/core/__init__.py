"""Shared by every layer: errors, configs and the CLI, artifacts, environment, distributed, hub."""
