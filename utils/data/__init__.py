"""Stage 01: sources, cleaning, filters, dedup, demo corpus, prepare, report."""
