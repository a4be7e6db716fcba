"""Federated algorithms: each scheme's TF bodies composed into a typed TFF process.

`composition` wraps a scheme's bodies as TFF computations (`GanProcess`); `fedgan`,
`dp_fedavg_gan`, `fedsgd` and `multi_d` build the schemes' processes (the centralized baseline
is FedGAN's, fed differently: `tff_gan.run.schemes`); `aggregators` and `optimizers` configure
`tff.aggregators` and `tff.learning.optimizers`; `communication` sizes what a round sends.
"""
