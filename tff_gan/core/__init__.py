"""Pure TensorFlow: the GAN's state containers, losses, networks, seeds and training steps.

Nothing here imports TensorFlow Federated; every floor above builds on these functions.
"""
