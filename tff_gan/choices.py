"""Every choice list and default a run can name, importable before TensorFlow.

The run configuration (`tff_gan.run.config`) checks a command line against these lists in
milliseconds, and the modules that implement each choice read the same lists (e.g.
`algorithms.aggregators.build_aggregator` refuses a name not in `AGGREGATORS`), so a choice
is spelled once. `tests/test_choices.py` checks that every listed choice is implemented.
"""

from __future__ import annotations

# Tasks (see `tasks.TASKS`).
TASKS = ('digits', 'grid', 'ring', 'emnist', 'image_folder', 'tabular')
FILE_TASKS = ('emnist', 'image_folder', 'tabular')  # Read from --data_dir, natural clients.
LABELLED_TASKS = ('digits', 'grid', 'ring', 'emnist')  # Those a conditional GAN can train on.
# The network pair of each task when --model is not given (the first of its choices).
DEFAULT_MODELS = {'emnist': 'dcgan', 'image_folder': 'dcgan'}
DEFAULT_IMAGE_SIZE = 32

# Training schemes (`tff_gan.run.schemes`).
SCHEMES = ('fedgan', 'dp_fedavg_gan', 'fedsgd', 'centralized', 'multi_d', 'gs_wgan', 'scaffold')
# The schemes whose discriminators stay on their clients (`algorithms.multi_d`).
CLIENT_RESIDENT_SCHEMES = ('multi_d', 'gs_wgan')
# Flags a scheme has no use for, with their neutral values, and why (`run.config` refuses
# them).
SCHEME_UNUSED_FLAGS = {
    'centralized': ('which trains on the pooled data in one place', {
        'examples_per_client': 0, 'dp_noise_multiplier': None, 'dropout_rate': 0.0,
        'proximal_mu': 0.0, 'aggregator': 'mean', 'server_optimizer': 'sgd',
        'server_learning_rate': 1.0, 'server_lr_half_life': 0.0, 'client_sampling': 'fixed'}),
    'multi_d': ('whose discriminators stay on their clients and are never averaged (the '
                'generator trains with --generator_learning_rate)', {
                    'proximal_mu': 0.0, 'aggregator': 'mean', 'server_optimizer': 'sgd',
                    'server_learning_rate': 1.0, 'server_lr_half_life': 0.0}),
    'gs_wgan': ('whose discriminators stay on their clients and send only sanitized '
                'gradients (the generator trains with --generator_learning_rate)', {
                    'proximal_mu': 0.0, 'aggregator': 'mean', 'server_optimizer': 'sgd',
                    'server_learning_rate': 1.0, 'server_lr_half_life': 0.0,
                    'dp_adaptive_clip_quantile': None,
                    'discriminator_mixture': 'mean'}),
    'scaffold': ('whose control variates assume plain averaged updates (no clipping, noise, '
                 'compression or proximal term)', {
                     'dp_noise_multiplier': None, 'aggregator': 'mean', 'proximal_mu': 0.0}),
}
# The networks FedProx's proximal term applies to in fedgan (`--proximal_networks`).
PROXIMAL_NETWORKS = ('both', 'discriminator')
# How multi_d's server combines the clients' discriminators (`core.feedback`).
DISCRIMINATOR_MIXTURES = ('mean', 'universal')
# multi_d keeps a discriminator per client: a cross-silo scheme, for populations up to this.
MAX_CLIENT_RESIDENT_DISCRIMINATORS = 1000
# Generator steps per round of the schemes whose server trains the generator. dp_fedavg_gan
# trains in short equal blocks: 4 discriminator steps on each client (DEFAULT_LOCAL_STEPS),
# then 4 generator steps on the server, and samples from the generator's moving average
# (README, "What DP training reaches here": longer or one-sided blocks let one side win).
DEFAULT_SERVER_GEN_STEPS = {'dp_fedavg_gan': 4, 'multi_d': 16, 'gs_wgan': 1}
DEFAULT_LOCAL_STEPS = {'dp_fedavg_gan': 4}  # Elsewhere 0: every batch of the local epochs.
DEFAULT_GENERATOR_EMA = {'dp_fedavg_gan': 0.98}  # Elsewhere 0: off.
# The client learning rate ('' for every scheme not named), and the rounds over which it
# halves (`algorithms.scaffold`; 0: constant). scaffold's were measured on pathological ring
# clients (README, Heterogeneous clients): faster steps find the modes sooner, steps 10x
# smaller by round 300 sharpen them.
DEFAULT_CLIENT_LEARNING_RATE = {'': 1e-3, 'scaffold': 2e-3}
DEFAULT_CLIENT_LR_HALF_LIFE = {'scaffold': 90.0}  # Elsewhere 0: constant.
# multi_d's pull toward the samples the clients judged (`core.feedback`), for data in [-1, 1].
DEFAULT_SAMPLE_ANCHOR = 300.0

# Clients (`tff_gan.clients`).
DEFAULT_NUM_CLIENTS = 10
# Clients per round unless set: this many, or every client of a smaller population.
DEFAULT_CLIENTS_PER_ROUND = 10
SPLITS = ('iid', 'dirichlet', 'pathological')  # How `clients.partition` splits one dataset.
# Below this Dirichlet concentration every label lands on one client, and numpy's sampler
# slows as 1/alpha (0.14 s a draw at 1e-9, minutes at 1e-12, in C: Ctrl-C waits).
MIN_DIRICHLET_ALPHA = 1e-3
PARTITIONS = (*SPLITS, 'natural')  # ... or the clients the data comes in.
CLIENT_SAMPLING = ('fixed', 'poisson')

# Losses and optimizers (`core.losses`, `algorithms.optimizers`).
LOSSES = ('non_saturating', 'wasserstein_gp')
CLIENT_OPTIMIZERS = ('sgd', 'adam', 'rmsprop')
SERVER_OPTIMIZERS = ('sgd', 'sgdm', 'adam', 'yogi', 'adagrad')
OPTIMIZERS = ('sgd', 'sgdm', 'adam', 'yogi', 'adagrad', 'rmsprop')  # Every one built.

# Aggregation (`algorithms.aggregators`).
AGGREGATORS = ('mean', 'unweighted_mean', 'robust', 'secure', 'compressed')
# Aggregators whose sum the run loop computes outside TFF, with cryptography (`tff_gan.secure`).
SECURE_AGGREGATORS = ('he', 'secagg')
# --secure_clip's default: the public L2 bound of a client's update under SECURE_AGGREGATORS.
DEFAULT_SECURE_CLIP = 10.0
DEFAULT_BITS = 8
MAX_BITS = 16  # The most tensor_encoding's uniform quantization allows.

# Differential privacy (`privacy.accounting`).
DP_ACCOUNTANTS = ('rdp', 'pld')
# What a run's DP protects: a client's whole data (DP-FedAvg) or each example (DP-SGD).
DP_UNITS = ('client', 'example')
# Where DP draws come from (`core.seeds.noise_key`): a per-process key from the OS's entropy,
# or one derived from the run seed (repeatable, and no privacy against whoever knows it).
DP_NOISE = ('entropy', 'reproducible')
# The schemes whose clients' discriminators can train with DP-SGD (`core.dp_sgd`).
EXAMPLE_DP_SCHEMES = ('fedgan', 'dp_fedavg_gan')
DEFAULT_DP_CLIP = 1.0
DEFAULT_DP_DELTA = 1e-5

# Evaluation: pooled real data (simulation only), or computed on the clients
# (`tasks.federated_eval`) for the tasks whose metrics come from a classifier of labelled images.
EVAL_MODES = ('pooled', 'federated')
FEDERATED_EVAL_TASKS = ('digits', 'emnist')

# Execution (`tff_gan.runtime`) and the round loop (`tff_gan.run`).
EXECUTORS = ('local', 'remote')
MODES = ('sync', 'async')
ASYNC_RULES = ('fedbuff', 'fedasync')
DEFAULT_ASYNC_LATENCY = 'lognormal:0,0.5'
