"""Evaluation protocols beyond usam/evaluate.py's paper tables (the interactive protocol)."""
