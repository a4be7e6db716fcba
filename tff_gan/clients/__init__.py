"""The simulated clients: populations and their datasets, partitions, sampling, timing."""
