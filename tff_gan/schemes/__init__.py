"""Training schemes, one module each; each builds a `tff.templates.IterativeProcess`."""
