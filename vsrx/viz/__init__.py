"""Seeing what alignment learned: `vsrx viz-offsets` (see report.py for the output layout)."""
