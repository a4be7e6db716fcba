"""Secure aggregation: homomorphic encryption and masking protocols (driver side).

* `he`: additively homomorphic aggregation with TenSEAL's BFV, the primitives of
  `--aggregator=he`: parameters and their headroom, fixed-point encoding with stochastic
  rounding, and the roles (key holder, client encryptor, aggregator), with the threat model.
* `he_process`: that aggregator in its own OS process, so that it provably holds no secret key.

Simulated: every role runs on this machine. `--aggregator=secure` is TFF's secure aggregator,
whose secure sums the simulation runtime executes as plain sums (see
`tff_gan.runtime.contexts`): it protects no update.
"""
