"""Metrics, evaluation protocols and reports. Built by the evaluation issue."""
