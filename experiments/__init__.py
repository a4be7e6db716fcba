"""Use cases built on the library: the bug-finding scenario of DP-FedAvg-GAN."""
