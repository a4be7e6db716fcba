"""Differential privacy: accounting of ε for DP-FedAvg (`accounting`)."""
