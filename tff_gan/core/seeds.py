"""Every seed of a run, derived from its one run seed; every salt named once, here.

A run is deterministic: client sampling, dropouts, shuffling, generated clients, latencies,
noise and initial weights are all derived from (run seed, round, client, salt), so any round
can be recomputed without replaying the ones before it, and a resumed run continues exactly.
Two kinds of derivation:

* driver side (numpy): `derived_seed(run seed, ..., SALT)` feeds a `np.random.default_rng`;
* inside computations (TF, stateless): `round_seed`, `batch_seed` and `server_generator_seed`
  fold round, step and batch into the int64 `[2]` seed kept in the server state.

Each salt below separates one stream from every other; changing one changes every run.
"""

from __future__ import annotations

import contextlib
import functools
import random
import secrets

import numpy as np
import tensorflow as tf
from keras.src import backend as keras_backend

# Driver-side streams (numpy): the last entropy word of `derived_seed`.
CLIENT_SAMPLING_SALT = 0x5A3F  # Which clients a round samples.
DROPOUT_SALT = 0xD209  # Which sampled clients drop out.
NATURAL_SUBSET_SALT = 0x5B5  # Which of the data's natural clients a run keeps.
ASYNC_CHOICE_SALT = 0xA5C  # Which idle clients an asynchronous dispatch sends the model to.
STRAGGLER_SALT = 0x5716  # Which clients are stragglers.
LATENCY_SALT = 0x1A7  # How long a client's task takes.
INVERTED_WRITERS_SALT = 0xB06  # Which writers the bug-finding scenario's app update inverts.
EVAL_CLASSIFIER_SALT = 0xEC1  # Which clients a round of federated evaluation's FedAvg draws.
# Generated clients (TF, folded into `[run seed, salt]`).
GENERATED_LABELS_SALT = 0x6E4  # A generated client's label skew and labels.
GENERATED_EXAMPLES_SALT = 0xE7A  # A generated client's examples.
# In computations.
SERVER_GENERATOR_SALT = -1  # Folded into a round seed: never a client's seed.
FEEDBACK_SALT = -2  # Folded into a round seed: the noise client-resident Ds judge.
WARM_START_SALT = -3  # Folded into the run seed: client-resident Ds' pretraining.
EVALUATION_NOISE_SALT = 1  # Second word of the evaluation noise seed `[seed, salt]`.
INITIAL_STATE_SALT = 0  # Second word of the run seed `[seed, salt]` in the server state.
REPRODUCIBLE_NOISE_SALT = 0xD9  # Second word of `--dp_noise=reproducible`'s key `[seed, salt]`.

_HASH_BUCKETS = 2**62


def derived_seed(*entropy: int) -> int:
  """A 32-bit seed for `np.random.default_rng` mixing every word of `entropy`."""
  return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


@functools.cache
def entropy_noise_key() -> tuple[int, int]:
  """This process's DP noise key: two 63-bit words from the OS's entropy (`secrets`), drawn
  once per process and never written anywhere.

  TF's unseeded random ops are no substitute: every one in a process descends from one
  `std::mt19937_64` seeded with a single 32-bit draw of `std::random_device`, so their whole
  output could be searched exhaustively.
  """
  return secrets.randbits(63), secrets.randbits(63)


def noise_key(dp_noise: str, seed: int) -> tuple[int, int]:
  """The key every DP draw of a run descends from (noise, and Poisson masks of DP-SGD).

  Args:
    dp_noise: 'entropy', this process's `entropy_noise_key`; or 'reproducible', a key
      derived from the run seed, so the run repeats and resumes exactly and whoever knows the
      seed can recompute every draw.
    seed: The run seed.
  """
  if dp_noise == 'entropy':
    return entropy_noise_key()
  if dp_noise == 'reproducible':
    return seed, REPRODUCIBLE_NOISE_SALT
  raise ValueError(f"dp_noise must be 'entropy' or 'reproducible', got {dp_noise!r}.")


@tf.autograph.experimental.do_not_convert
def keyed_seed(key: tuple[int, int], counter):
  """The stateless seed `[2]` of draw `counter` (int64 scalar or tensor) under `key`."""
  return tf.random.experimental.stateless_fold_in(tf.constant(key, tf.int64),
                                                  tf.cast(counter, tf.int64))


def shuffle_seed(seed: int, round_num: int, client_id: int) -> int:
  """The shuffle seed of client `client_id`'s dataset in round `round_num`."""
  return derived_seed(seed, round_num, client_id)


@tf.autograph.experimental.do_not_convert
def run_seed(seed: int):
  """The int64 `[2]` stateless seed a run keeps in its server state."""
  return tf.constant([seed, INITIAL_STATE_SALT], tf.int64)


def evaluation_noise_seed(seed: int) -> list[int]:
  """The stateless seed of the generator noise that evaluates and exports samples."""
  return [seed, EVALUATION_NOISE_SALT]


@tf.autograph.experimental.do_not_convert
def round_seed(seed, round_num):
  """The stateless seed of round `round_num` of a run with run seed `seed` (int64 `[2]`)."""
  return tf.random.experimental.stateless_fold_in(seed, tf.cast(round_num, tf.int64))


@tf.autograph.experimental.do_not_convert
def batch_seed(seed, step, batch):
  """A seed unique to (round seed, local step, batch contents).

  Clients share the round seed; folding in a hash of the batch gives each client its own
  noise stream without the client having to know its identity.
  """
  content_key = tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(batch), _HASH_BUCKETS)
  step_seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(step, tf.int64))
  return tf.random.experimental.stateless_fold_in(step_seed, content_key)


@tf.autograph.experimental.do_not_convert
def warm_start_seed(seed):
  """The seed of the client-resident discriminators' pretraining (`core.warm_start`); each
  client's noise streams then fork on its batches' contents (`batch_seed`)."""
  return tf.random.experimental.stateless_fold_in(seed, tf.constant(WARM_START_SALT, tf.int64))


@tf.autograph.experimental.do_not_convert
def server_generator_seed(seed, round_num):
  """The seed of the server's generator noise in round `round_num` (DP-FedAvg-GAN)."""
  return tf.random.experimental.stateless_fold_in(
      round_seed(seed, round_num), tf.constant(SERVER_GENERATOR_SALT, tf.int64))


@tf.autograph.experimental.do_not_convert
def generated_client_seed(seed: int, salt: int, client_id):
  """The stateless seed of one generated client's labels or examples."""
  return tf.random.experimental.stateless_fold_in(
      tf.constant([seed, salt], tf.int64), tf.cast(client_id, tf.int64))


@contextlib.contextmanager
def keras_initializers_seeded(seed: int):
  """Makes Keras initializers without an explicit seed draw their seeds from `seed`.

  Keras 2.14's unseeded initializers take their op seeds from Python's global `random`, so
  the same graph-level seed still gives different weights in different processes.
  `tf.keras.utils.set_random_seed` would fix that by reseeding Python's, numpy's and TF's
  global generators; this changes only Keras' (thread-local) seed source, and restores it.
  """
  seed_source = keras_backend._SEED_GENERATOR  # noqa: SLF001 (no public per-scope API)
  previous = getattr(seed_source, 'generator', None)
  seed_source.generator = random.Random(seed)
  try:
    yield
  finally:
    seed_source.generator = previous
