"""Evaluation: metrics, tasks and experiment runners."""
