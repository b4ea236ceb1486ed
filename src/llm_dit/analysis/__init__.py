"""Looking at results, read-only: an experiment's dimensions and filters, image comparisons (grids, diffs) and
plots. May import metrics/ and everything below; the viewer and the CLI sit above it.
"""
