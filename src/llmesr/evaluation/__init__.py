"""Metrics, candidate protocols, long-tail groups, statistics and reports."""
