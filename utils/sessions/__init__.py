"""Timed sessions: the runner and the plans."""
