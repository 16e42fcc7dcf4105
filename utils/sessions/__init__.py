"""Timed sessions (scripts/session.py, make session-*).

runner       Session: stages run in order under a time budget, session.log and report.md, the API probe
plans        the sessions: quick, prototype, experiment, evaluation, architecture, test-pipeline, and their budgets
diagnostics  status, debug, cleanup and the RTX 4090 micro-batch advice (config-rtx4090)
experiment   equal-budget experiments (scripts/experiment.py): variants, LR sweeps, per-variant calibration
experiment_report  an experiment's report.md table and curves.png
"""
