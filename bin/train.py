"""Train a GAN with federated learning on TensorFlow Federated.

With no flags, trains FedGAN on the embedded `ring` task (8 Gaussians on the unit circle)
with 10 IID clients and writes config.json, metrics.csv, samples/, checkpoints/ and tb/ to
--output_dir. Rerunning the same command on the same --output_dir resumes from the latest
checkpoint; --overwrite starts over.

Examples:
  python bin/train.py
  python bin/train.py --task=digits --model=dcgan --rounds=100 --batch_size=32 \\
      --local_epochs=5 --output_dir=runs/digits
  python bin/train.py --scheme=dp_fedavg_gan --num_clients=1000 --clients_per_round=50 \\
      --client_sampling=poisson --dp_noise_multiplier=0.76 --dp_clip=0.1
  python bin/train.py --partition=dirichlet --dirichlet_alpha=0.1 --num_clients=50 \\
      --clients_per_round=10
  python bin/train.py --task=image_folder --data_dir=/data/hospitals --image_size=32
  python bin/train.py --task=emnist --data_dir=~/emnist --model_width=0.25
  python bin/train.py --task=digits --conditional --model=dcgan --output_dir=runs/cgan
  python bin/train.py --mode=async --num_clients=100 --buffer_size=10 \\
      --max_concurrent_clients=20 --straggler_fraction=0.2 --output_dir=runs/fedbuff
  python bin/train.py --executor=remote --workers=10.0.0.5:8000,10.0.0.6:8000 \\
      --tls_ca=certs/ca.pem --tls_client_cert=certs/trainer.pem \\
      --tls_client_key=certs/trainer.key --auth_token_file=certs/token
      (workers started with bin/worker.py --port=8000 and their TLS files, made by
      bin/make_certs.py; see docs/deployment.md)
"""

from __future__ import annotations

import os
import sys

import _cli
from absl import flags

from tff_gan import choices
from tff_gan.run import config as config_lib
from tff_gan.run import rundir

_DEFAULTS = config_lib.TrainConfig()
# Fields whose default depends on the task: the flags keep the unresolved default ('' or 0),
# which TrainConfig resolves once --task is known.
_UNRESOLVED = {name: field.default
               for name, field in config_lib.TrainConfig.__dataclass_fields__.items()}

flags.DEFINE_string('task', _DEFAULTS.task, 'Task: ring, grid (2-D Gaussian mixtures) or '
                    'digits (scikit-learn 8x8 digits), all embedded; or, read from your files '
                    'in --data_dir and split into their natural clients: emnist (federated '
                    "EMNIST by writer, TFF's emnist_all.sqlite), image_folder (DATA_DIR/"
                    '<client>/*.png|jpg, one client per folder) or tabular (DATA_DIR/'
                    '<client>.csv, numeric columns, one client per file). README: Real data.')
flags.DEFINE_string('data_dir', _DEFAULTS.data_dir, 'Folder holding the files of --task=emnist, '
                    'image_folder or tabular. Nothing is ever downloaded.')
flags.DEFINE_integer('image_size', None, '--task=image_folder: images are resized to this '
                     'many pixels square (a multiple of 4; default '
                     f'{choices.DEFAULT_IMAGE_SIZE}).')
flags.DEFINE_bool('only_digits', _DEFAULTS.only_digits, '--task=emnist: the 10 digit classes '
                  '(3383 writers); --noonly_digits for all 62 classes (3400 writers).')
flags.DEFINE_bool('conditional', _DEFAULTS.conditional, 'Train a class-conditional GAN (G and D '
                  'see the class; tasks with classes: ring, grid, digits, emnist). Adds the '
                  'conditional_accuracy metric; bin/generate.py --label picks the class.')
flags.DEFINE_string('scheme', _DEFAULTS.scheme, 'Training scheme: fedgan (clients train G and D; '
                    'the server averages both) or dp_fedavg_gan (clients train only D; the server '
                    'trains G against it, never touching client data) or fedsgd (clients send '
                    'gradients at the global weights over their local data; the server optimizer '
                    'takes the step) or centralized (the baseline: the same nets and losses '
                    'trained on the pooled data, each round taking as many steps as all sampled '
                    'clients of a fedgan round do together) or multi_d (each client keeps its own '
                    'discriminator, trained on its data and never sent; the server trains G from '
                    "the clients' per-sample feedback on its samples: for heterogeneous clients; "
                    'see --discriminator_mixture) or gs_wgan (GS-WGAN, Chen et al. 2020: multi_d '
                    'with the mean mixture and WGAN-GP, each client clipping every per-sample '
                    'gradient to --dp_clip and adding noise of std --dp_noise_multiplier*clip '
                    "before it leaves; needs --dp_noise_multiplier. It protects each client's "
                    'whole data (--dp_unit=client: its one discriminator saw all of it), against '
                    "a server that sees every message: each client's epsilon counts the rounds "
                    'that sampled it, with no amplification by client sampling) or scaffold '
                    '(fedgan whose local steps are corrected by SCAFFOLD control variates, '
                    'Karimireddy et al. 2020: each client keeps an estimate of its own gradient '
                    'between rounds, the server the mean of all; for heterogeneous clients; twice '
                    "fedgan's bytes; mean aggregator, no DP, sync mode).")
flags.DEFINE_string('model', _UNRESOLVED['model'], 'Network pair: mlp (all tasks) or dcgan '
                    '(image tasks: digits, emnist, image_folder). Default: dcgan for emnist and '
                    'image_folder, mlp otherwise.')
flags.DEFINE_float('model_width', _DEFAULTS.model_width, 'Multiplier on hidden layer sizes.')
flags.DEFINE_float('discriminator_width', _DEFAULTS.discriminator_width, "The discriminator's "
                   'own multiplier on its hidden layer sizes (0: --model_width). Under DP the '
                   "noise's norm grows with the square root of the noised parameters; "
                   'dp_fedavg_gan noises the discriminator alone.')
flags.DEFINE_integer('num_clients', _UNRESOLVED['num_clients'], 'Number of clients. Embedded '
                     'tasks: simulated clients the data is split over (default '
                     f'{choices.DEFAULT_NUM_CLIENTS}). --partition=natural: N of the '
                     "data's clients drawn at random (seeded), or 0 (default) for all.")
flags.DEFINE_integer('clients_per_round', _UNRESOLVED['clients_per_round'],
                     'Clients per round: exactly (--client_sampling=fixed) or in expectation '
                     f'(poisson). Default: {choices.DEFAULT_CLIENTS_PER_ROUND}, or every client '
                     'when the data has fewer.')
flags.DEFINE_integer('rounds', _DEFAULTS.rounds, 'Number of federated rounds.')
flags.DEFINE_string('partition', _UNRESOLVED['partition'], 'How examples are split over clients: '
                    'iid, dirichlet (label skew, see --dirichlet_alpha) or pathological '
                    '(--labels_per_client labels each); natural: the clients the files come '
                    'in (default for tasks read from --data_dir; iid otherwise).')
flags.DEFINE_float('dirichlet_alpha', _DEFAULTS.dirichlet_alpha, 'Dirichlet concentration of '
                   'the dirichlet partition; small values give skewed clients.')
flags.DEFINE_integer('labels_per_client', _DEFAULTS.labels_per_client, 'Labels (modes or '
                     'digit classes) per client in the pathological partition.')
flags.DEFINE_integer('examples_per_client', _DEFAULTS.examples_per_client, '0: split the '
                     "task's fixed dataset over --num_clients. N > 0 (ring, grid): each client "
                     'draws its own N examples on the TFF worker, labels skewed per client as '
                     '--partition says; memory and round time then do not grow with '
                     '--num_clients.')
flags.DEFINE_integer('local_epochs', _DEFAULTS.local_epochs, 'Passes over its data a client '
                     'makes per round (gs_wgan with --discriminator_shards: over the drawn '
                     "discriminator's shard, its critic steps).")
flags.DEFINE_integer('local_steps', _UNRESOLVED['local_steps'], 'Cap on local steps (batches) '
                     'per round; 0 means no cap. Each step updates D, then G. Default: 0, '
                     'except ' + ', '.join(f'{k} {v}' for k, v in
                                           choices.DEFAULT_LOCAL_STEPS.items()) + '.')
flags.DEFINE_integer('batch_size', _DEFAULTS.batch_size, 'Client batch size.')
flags.DEFINE_string('client_optimizer', _DEFAULTS.client_optimizer, 'Client optimizer of both '
                    'networks, fresh every round: ' + ', '.join(choices.CLIENT_OPTIMIZERS) +
                    ' (adam uses beta1=0.5).')
flags.DEFINE_float('client_learning_rate', _UNRESOLVED['client_learning_rate'],
                   'Client learning rate. Default: ' + ', '.join(
                       f'{k or "every scheme"} {v:g}' for k, v in
                       choices.DEFAULT_CLIENT_LEARNING_RATE.items()) + '.')
flags.DEFINE_float('client_generator_learning_rate', None, "fedgan, centralized: the clients' "
                   'generator learning rate, if not --client_learning_rate (lower: D outpaces G).')
flags.DEFINE_float('client_lr_half_life', _UNRESOLVED['client_lr_half_life'], '--scheme='
                   'scaffold: the rounds over which the client learning rate halves (round r '
                   'trains at lr * 2^(-r/half_life)); 0: constant. Default: 0, except ' + ', '.join(
                       f'{k} {v:g}' for k, v in choices.DEFAULT_CLIENT_LR_HALF_LIFE.items()) + '.')
flags.DEFINE_string('server_optimizer', _DEFAULTS.server_optimizer, 'Server optimizer applied '
                    'to the averaged deltas: ' + ', '.join(choices.SERVER_OPTIMIZERS) +
                    '; sgd with learning rate 1 is FedAvg.')
flags.DEFINE_float('server_learning_rate', _DEFAULTS.server_learning_rate, 'Server learning rate.')
flags.DEFINE_float('server_lr_half_life', _DEFAULTS.server_lr_half_life, 'The server steps (rounds;'
                   ' model versions with --mode=async) over which the server learning rate '
                   'halves: step t uses lr * 2^(-t/half_life); 0: constant.')
flags.DEFINE_string('loss', _UNRESOLVED['loss'], 'GAN loss: ' + ', '.join(choices.LOSSES) +
                    '. Default: wasserstein_gp for gs_wgan, non_saturating otherwise.')
flags.DEFINE_float('proximal_mu', _DEFAULTS.proximal_mu, 'FedProx: adds (mu/2)*||w - '
                   'w_global||^2 to the local objective of every network trained on clients; '
                   '0 is FedAvg.')
flags.DEFINE_enum('proximal_networks', _DEFAULTS.proximal_networks, choices.PROXIMAL_NETWORKS,
                  'fedgan with --proximal_mu > 0: the client networks the proximal term pulls '
                  'back. both: G and D; discriminator: D alone, so each client\'s D stays near '
                  'the global one while its G moves freely.')
flags.DEFINE_string('aggregator', _DEFAULTS.aggregator, 'How client updates are combined: '
                    'mean (weighted by examples trained on: FedAvg); unweighted_mean; robust '
                    "(TFF's robust aggregator: non-finite and outsized updates zeroed, norms "
                    "clipped adaptively); secure (TFF's secure aggregator: robust's zeroing and "
                    'clipping, then values clipped to an adaptive range, quantized to 32-bit '
                    'integers and summed with tff.federated_secure_sum_bitwidth. SIMULATED: '
                    'the local runtime runs secure sums as plain sums, so the clipping, '
                    'quantization and bit widths are real but no cryptography runs; see secagg '
                    'for masking that runs); compressed (each tensor of 64+ elements uniformly '
                    'quantized to --bits bits with stochastic rounding, so runs are not bitwise '
                    'reproducible); he (homomorphic encryption, TenSEAL BFV at 128-bit '
                    'security: each update clipped to --secure_clip, encoded in fixed point, '
                    'weighted by its example count and encrypted; an aggregator process holding '
                    'only the public key adds the ciphertexts and the key holder decrypts only '
                    'the sum; with --dp_unit=client the clients clip to --dp_clip and the key '
                    'holder, a trusted curator, adds the noise to the decrypted sum); secagg '
                    '(SecAgg+ pairwise masking, Bonawitz et al. 2017 on the neighbour graph of '
                    'Bell et al. 2020: X25519 key agreement, ChaCha20 masks mod 2^32, Shamir '
                    'shares that let the server unmask the sum when clients drop out; the '
                    'server sees masked vectors and the sum; sync rounds, no DP yet but '
                    "gs_wgan's). he and secagg: fedgan, dp_fedavg_gan, fedsgd, multi_d and "
                    "gs_wgan with the mean mixture (the sum of the clients' feedback; gs_wgan's "
                    'clients noise it before it leaves, so the sum adds no noise), not the '
                    'universal mixture; he also with --mode=async (fedgan, dp_fedavg_gan, '
                    'fedsgd: the staleness weights integer multipliers of the ciphertexts, in a '
                    'wider BFV format; under DP each client scales its update by its staleness '
                    'weight before it clips it, as the DP aggregator does, and the key holder '
                    "noises each server step); SIMULATED roles: every client's encryption or "
                    'masking, the key holder and the SecAgg+ server run in the trainer process '
                    '(the HE aggregator in a process of its own), which therefore also sees '
                    'each update. Other aggregators cannot be combined with differential '
                    'privacy, which brings its own.')
flags.DEFINE_float('secure_clip', None, '--aggregator=he or secagg: the public L2 bound each '
                   'client update is clipped to before it is encoded; with the largest example '
                   'count and --clients_per_round it sets the fixed-point precision (no sum may '
                   f'wrap the modulus). Default {choices.DEFAULT_SECURE_CLIP:g}; for multi_d, '
                   "whose feedback norms grow with training, the largest the sum holds at 8 "
                   'fraction bits, up to 10000; for gs_wgan a bound its noised feedback '
                   'passes with probability below 1e-8. metrics.csv\'s clipped_fraction '
                   '(not under DP) says how often it bit.')
flags.DEFINE_integer('secagg_neighbours', None, '--aggregator=secagg: k, the neighbours each '
                     'client agrees masks with and shares its secrets among. Default: every '
                     'other client of the round up to 33 clients (Bonawitz et al.), else 32.')
flags.DEFINE_integer('secagg_threshold', None, '--aggregator=secagg: t, the shares that rebuild '
                     "a client's secret; more than k/2 (so a server lying about dropouts cannot "
                     'rebuild both of a client\'s secrets). Default floor(k/2) + 1: a round '
                     'survives up to k - t dropouts of a client\'s neighbours; past that it '
                     'aborts and the model stays as it is.')
flags.DEFINE_integer('bits', None, '--aggregator=compressed: bits per quantized value, 1 to '
                     f'{choices.MAX_BITS} (default {choices.DEFAULT_BITS}).')
flags.DEFINE_bool('hadamard', _DEFAULTS.hadamard, '--aggregator=compressed: rotate each tensor '
                  'by a randomized Hadamard transform before quantizing (narrower ranges, '
                  'padded to a power of 2).')
flags.DEFINE_float('dropout_rate', _DEFAULTS.dropout_rate, 'Probability that a sampled '
                   'client fails after the broadcast; the round aggregates the survivors '
                   '(weights renormalized), and a round where all fail leaves the model '
                   'unchanged.')
flags.DEFINE_integer('server_gen_steps', _UNRESOLVED['server_gen_steps'], 'dp_fedavg_gan, '
                     'multi_d: generator steps the server takes per round (batch '
                     '--batch_size). Default: ' + ', '.join(
                         f'{k} {v}' for k, v in choices.DEFAULT_SERVER_GEN_STEPS.items()) + '.')
flags.DEFINE_float('generator_learning_rate', _DEFAULTS.generator_learning_rate,
                   'dp_fedavg_gan, multi_d: learning rate of the server generator optimizer '
                   '(Adam, beta1=0.5; its state is kept in the server state).')
flags.DEFINE_float('generator_ema', _UNRESOLVED['generator_ema'], 'Decay of an exponential '
                   "moving average of the generator's weights kept by the server, updated once "
                   'per round (e.g. 0.9); samples, evaluation and export use the average. 0: '
                   'off. Default: 0, except ' + ', '.join(
                       f'{k} {v}' for k, v in choices.DEFAULT_GENERATOR_EMA.items()) + '.')
flags.DEFINE_integer('discriminator_shards', _DEFAULTS.discriminator_shards, 'gs_wgan: K, '
                     'the discriminators each client keeps. Its data is split over them by a '
                     'hash of each example; every round one, drawn at random from the noise '
                     'key, trains on its shard (--local_steps caps its steps) and answers. '
                     'With K >= 2, --dp_unit=example protects each example, amplified by 1/K '
                     "(GS-WGAN's construction); --dp_unit=client protects the client's data, "
                     'unamplified, for any K.')
flags.DEFINE_integer('warm_start_steps', _DEFAULTS.warm_start_steps, 'multi_d, gs_wgan: steps '
                     'each discriminator takes on its shard before round 1 (README). 0: off.')
flags.DEFINE_float('sample_anchor', None, "multi_d: weight λ of (λ/2)·‖G(z) − G₀(z)‖², which "
                   "keeps the server's generator steps near the samples G₀(z) the clients "
                   'judged (their feedback is stale after the first step); 0: off. Default '
                   f'{choices.DEFAULT_SAMPLE_ANCHOR:g} (tuned on ring, data in [-1, 1]).')
flags.DEFINE_enum('discriminator_mixture', _DEFAULTS.discriminator_mixture,
                  choices.DISCRIMINATOR_MIXTURES, 'multi_d: how the server combines the '
                  "clients' discriminators. mean (MD-GAN): G minimizes the examples-weighted "
                  "mean of the clients' generator losses. universal (UA-GAN): G is judged by "
                  "the discriminator whose odds are the weighted mean of the clients' odds, so "
                  'a client that never saw a mode does not veto it (non_saturating loss).')
flags.DEFINE_string('client_sampling', _DEFAULTS.client_sampling, 'fixed: exactly '
                    '--clients_per_round clients, drawn without replacement (privacy: '
                    'replace-one neighbouring datasets); poisson: each client joins with '
                    'probability clients_per_round/num_clients (privacy: add-or-remove-one '
                    'neighbouring datasets). Under client-level DP-FedAvg the sample is drawn '
                    "from --dp_noise's key, not from --seed: the amplification the accountant "
                    'credits needs a secret sample.')
flags.DEFINE_float('dp_noise_multiplier', None, 'Turns on differential privacy, of the unit '
                   '--dp_unit names: Gaussian noise of std noise_multiplier*clip is added to '
                   'each clipped sum. Client losses are then not released.')
flags.DEFINE_enum('dp_unit', _DEFAULTS.dp_unit, choices.DP_UNITS, 'What the DP protects. '
                  "client (DP-FedAvg): a client's whole data; each client update (D in "
                  'dp_fedavg_gan, G and D in fedgan) is clipped to --dp_clip and the sum '
                  "noised. example (DP-SGD; fedgan, dp_fedavg_gan): each example of a client; "
                  "every client's discriminator steps run on Poisson batches (rate "
                  'batch_size/n_k), each real example\'s gradient clipped to --dp_clip and the '
                  "sum noised; the generator reads only that discriminator. metrics.csv's "
                  'epsilon is the largest over clients, client_epsilon.csv has each. Each '
                  "client's masks and noise come from --dp_noise's key. With --scheme=gs_wgan "
                  "both units refer to the sanitized feedback: client, a client's whole data "
                  '(unamplified); example, each example, amplified by 1/K with '
                  '--discriminator_shards=K >= 2.')
flags.DEFINE_enum('dp_noise', _DEFAULTS.dp_noise, choices.DP_NOISE, 'Where every DP draw '
                  '(the noise; with --dp_unit=client also the round\'s client sample; with '
                  '--dp_unit=example the Poisson masks) comes from. '
                  "entropy: a key of 126 bits from the OS's entropy, drawn anew by every "
                  'training process and never written (in simulation that process draws on '
                  "behalf of every client; TF's unseeded generator is not used, its seed has "
                  '32 bits); runs neither repeat nor resume exactly. reproducible: a key '
                  'derived from --seed, so a run repeats and resumes bit for bit. NOT '
                  'PRIVATE: whoever knows the seed (the server) can recompute and remove the '
                  'noise; config.json says so. For experiments and tests only; not with '
                  '--dp_adaptive_clip_quantile.')
flags.DEFINE_float('dp_clip', None, f'L2 clip norm of a client update, or of one example\'s '
                   f'gradient with --dp_unit=example (default {choices.DEFAULT_DP_CLIP}); with '
                   '--dp_adaptive_clip_quantile, its initial value. The noise scales with it, so '
                   "a clip above the updates' norm only adds noise: a client taking one Adam "
                   'step (one batch) sends about lr*sqrt(weights), 0.35 for the ring '
                   "discriminator at dp_fedavg_gan's defaults.")
flags.DEFINE_float('dp_adaptive_clip_quantile', None, 'Adapt the clip norm toward this '
                   'quantile of client update norms, in (0, 1); the noised quantile estimate '
                   'is accounted for. Needs more than 10*noise_multiplier clients per round. '
                   "This is TFF's adaptive aggregator as it stands: its noise comes from TF's "
                   'unseeded generator (32-bit seed), not from --dp_noise.')
flags.DEFINE_float('dp_delta', None, f'delta at which epsilon is reported (default '
                   f'{choices.DEFAULT_DP_DELTA:g}); keep it well below 1/num_clients.')
flags.DEFINE_string('dp_accountant', _DEFAULTS.dp_accountant, 'Privacy accountant: rdp (Renyi '
                    'DP) or pld (privacy loss distributions; needs --client_sampling=poisson).')
flags.DEFINE_enum('eval', _DEFAULTS.eval, choices.EVAL_MODES, 'Where image metrics get their '
                  'real side. pooled (simulation): a classifier trained on real images in one '
                  'place and their activations. federated (' +
                  ', '.join(choices.FEDERATED_EVAL_TASKS) + '): the classifier trained by FedAvg '
                  "on the clients and the real activations' mean and covariance summed from "
                  'the clients; no real image leaves its client (what a deployment can run).')
flags.DEFINE_integer('eval_every', _DEFAULTS.eval_every, 'Evaluate and write samples every N '
                     'rounds (and after the last round).')
flags.DEFINE_integer('num_eval_samples', _DEFAULTS.num_eval_samples,
                     'Generated samples per evaluation.')
flags.DEFINE_integer('seed', _DEFAULTS.seed, 'Seed of initial weights, partition, client '
                     'sampling, shuffling and noise: the same seed repeats a run exactly.')
flags.DEFINE_string('output_dir', _DEFAULTS.output_dir, 'Where config.json, metrics.csv, '
                    'samples/, checkpoints/, tb/ (TensorBoard) and worker.log are written.')
flags.DEFINE_enum('executor', _DEFAULTS.executor, choices.EXECUTORS, 'local: a TFF worker '
                  'process on this machine, started and stopped by this program. remote: the '
                  'TFF workers at --workers (see docs/deployment.md).')
flags.DEFINE_string('workers', _DEFAULTS.workers, 'With --executor=remote: host:port of each '
                    'worker (bin/worker.py), comma-separated. Several workers share each '
                    "round's clients.")
flags.DEFINE_float('worker_timeout', _DEFAULTS.worker_timeout, 'Seconds to wait for a remote '
                   'worker to answer at start, or to come back after a lost connection, before '
                   'the run ends with an error.')
flags.DEFINE_string('tls_ca', _DEFAULTS.tls_ca, '--executor=remote: PEM file of the CA that '
                    "signed the workers' certificates; turns TLS on for every worker "
                    '(bin/worker.py --tls_cert/--tls_key).')
flags.DEFINE_string('tls_client_cert', _DEFAULTS.tls_client_cert, 'With --tls_ca: PEM client '
                    'certificate, for workers started with --tls_client_ca.')
flags.DEFINE_string('tls_client_key', _DEFAULTS.tls_client_key, 'With --tls_ca: the PEM '
                    'private key of --tls_client_cert.')
flags.DEFINE_string('auth_token_file', _DEFAULTS.auth_token_file, 'With --tls_ca: file '
                    "holding the token the workers expect (their --auth_token_file).")
flags.DEFINE_enum('mode', _DEFAULTS.mode, choices.MODES, 'sync: rounds of sampled clients '
                  'that the server waits for. async: the server keeps '
                  '--max_concurrent_clients clients at work and updates the model as they '
                  'report, on a simulated clock (see --async_rule). Under DP each client\'s '
                  'epsilon composes its own reports, unamplified (client_epsilon.csv).')
flags.DEFINE_enum('async_rule', _DEFAULTS.async_rule, choices.ASYNC_RULES, '--mode=async: '
                  'fedbuff (apply the staleness-weighted mean of every --buffer_size reports) or '
                  'fedasync (apply each report at once, scaled by --fedasync_mixing times its '
                  'staleness weight).')
flags.DEFINE_integer('buffer_size', _UNRESOLVED['buffer_size'], 'FedBuff: reports per server '
                     'step, K (default: --clients_per_round).')
flags.DEFINE_integer('max_concurrent_clients', _UNRESOLVED['max_concurrent_clients'],
                     '--mode=async: clients at work at once (default: twice --buffer_size, at '
                     'most --num_clients).')
flags.DEFINE_float('staleness_exponent', _DEFAULTS.staleness_exponent, '--mode=async: a in the '
                   'staleness weight s(tau) = (1 + tau)^-a of a report computed tau model '
                   'versions ago; 0 weighs every report equally.')
flags.DEFINE_float('fedasync_mixing', _DEFAULTS.fedasync_mixing, 'FedAsync: alpha; a report '
                   'moves the model by alpha * s(tau) times its delta.')
flags.DEFINE_string('client_latency', _UNRESOLVED['client_latency'], 'Simulated duration of a '
                    "client's work: 'lognormal:MU,SIGMA' (log seconds ~ N(MU, SIGMA^2); "
                    f'default {choices.DEFAULT_ASYNC_LATENCY} with --mode=async). With '
                    '--mode=sync it adds simulated_time to metrics.csv (a round waits for its '
                    'slowest client).')
flags.DEFINE_float('straggler_fraction', _DEFAULTS.straggler_fraction, 'Fraction of clients '
                   '(fixed per client) that are stragglers.')
flags.DEFINE_float('straggler_slowdown', _DEFAULTS.straggler_slowdown, 'How many times longer a '
                   "straggler's work takes.")
flags.DEFINE_float('client_timeout', _DEFAULTS.client_timeout, 'Simulated seconds the server '
                   'waits for a client (dropped-out clients never report); 0: the 99.9th '
                   "percentile of a straggler's time.")
flags.DEFINE_integer('checkpoint_every', _DEFAULTS.checkpoint_every, 'Save the full training '
                     'state to OUTPUT_DIR/checkpoints every N rounds, after the last, at '
                     'the round a Ctrl-C or SIGTERM stops, and at the last round recorded '
                     'when a worker is lost. '
                     'Rerunning the same command resumes from the latest checkpoint and ends '
                     'exactly as an uninterrupted run would.')
flags.DEFINE_bool('overwrite', False, 'Delete the outputs of an earlier run in --output_dir '
                  '(config.json, metrics.csv, samples/, checkpoints/, tb/, worker.log) and '
                  'start over, instead of resuming it.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')

FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  program = os.path.basename(argv[0])
  _cli.parse_flags(argv, __doc__)
  try:  # Checked before TensorFlow is imported, so a typo costs milliseconds.
    config = config_lib.TrainConfig(**{field: FLAGS[field].value for field in
                                       config_lib.TrainConfig.__dataclass_fields__}).validate()
    rundir.check_output_dir_writable(config.output_dir)
    if not FLAGS.overwrite:
      rundir.check_same_run(config)
  except config_lib.ConfigError as e:
    _cli.usage_error(program, str(e))

  _cli.quiet_tensorflow()
  import tasks  # noqa: PLC0415
  from tff_gan.run import persistence, training  # noqa: PLC0415
  from tff_gan.runtime.workers import WorkerError  # noqa: PLC0415

  try:
    task = tasks.task_from_config(config)
  except ValueError as e:  # ConfigError, or a task's own check of its arguments or files.
    _cli.usage_error(program, str(e))
  except WorkerError as e:  # The worker of a task's federated statistics.
    print(f'{program}: error: {e}', file=sys.stderr)
    return 1
  try:
    result = training.train(config, task, show_progress=FLAGS.progress,
                            overwrite=FLAGS.overwrite)
  except config_lib.ConfigError as e:
    _cli.usage_error(program, str(e))
  except (persistence.CheckpointError, persistence.StorageError, WorkerError) as e:
    print(f'{program}: error: {e}', file=sys.stderr)
    return 1
  summary = ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                      for k, v in result.last_row.items())
  print(f'{program}: done. Last round: {summary}')
  print(f'{program}: wrote {config.output_dir}/metrics.csv and {config.output_dir}/samples/')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
