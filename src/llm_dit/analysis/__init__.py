"""Looking at results: read-only experiment views, image comparisons (grids, diffs), plots and the web viewer."""
