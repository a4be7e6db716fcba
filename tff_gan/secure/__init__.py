"""Secure aggregation: homomorphic encryption and masking protocols (driver side).

* `he`: additively homomorphic aggregation with TenSEAL's BFV, the primitives of
  `--aggregator=he`: parameters and their headroom, and the roles (key holder, client
  encryptor, aggregator), with the threat model.
* `he_process`: that aggregator in its own OS process, so that it provably holds no secret key.
* `secagg`: SecAgg+ (pairwise masks with Shamir-shared seeds on a sparse neighbour graph,
  Bonawitz et al. 2017, Bell et al. 2020), the primitives of `--aggregator=secagg`: parameters
  and their checks, the graph, fixed point mod 2^32 and `secure_sum`, which runs one round with
  every party in this process, with the threat model; `secagg_parties` holds the client and
  server steps, `secagg_crypto` the building blocks (X25519, HKDF, ChaCha20, ChaCha20-Poly1305
  from `cryptography`, Shamir from pycryptodome).
* `fixed_point`: weighted fixed point with stochastic rounding, shared by `he` and `secagg`.

Simulated: every role runs on this machine. `--aggregator=secure` is TFF's secure aggregator,
whose secure sums the simulation runtime executes as plain sums (see
`tff_gan.runtime.contexts`): it protects no update.
"""
