"""A training run: its configuration, builders, round loops, recorder and run directory."""
