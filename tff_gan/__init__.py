"""tff-gan: federated GAN training on TensorFlow Federated."""

__version__ = '0.1.0'
