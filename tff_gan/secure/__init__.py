"""Secure aggregation: homomorphic encryption and masking protocols (driver side).

Empty in this release. `--aggregator=secure` is TFF's secure aggregator, whose secure sums
the simulation runtime executes as plain sums (see `tff_gan.runtime.contexts`): nothing in
this package protects an update yet.
"""
