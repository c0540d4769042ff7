"""Hyper-parameters, one dict per dataset, and what each key means. Edit the dict of the dataset you train on.

Any key can also be set for one run from the command line (python vae.py --help lists them all):
    python vae.py --dataset MNIST --z_dim 32 --encoder_filters 16,32,64 --deterministic false
A run folder keeps the settings it was trained with in its config.json: resuming it, or running
vae_inference.py on it, takes its model and data settings from there.
"""

# The dataset `python vae.py` and `python vae_inference.py` use when no --dataset is given.
dataset = 'MNIST'

config_mnist = {
    # data
    'dataset': 'MNIST', 'data_directory': 'MNIST/data', 'image_height': 28, 'image_width': 28, 'image_channels': 1,
    'binarize': False, 'test_seed': 0, 'num_train_images': 0,
    # model
    'z_dim': 16, 'likelihood': 'gaussian', 'kl_weight': 0.0005, 'decoder_variance': 'pixel',
    'decoder_min_variance': 0.001, 'encoder_filters': [16, 32, 64], 'encoder_strides': [2, 2, 2],
    'decoder_filters': [64, 32, 1], 'decoder_strides': [2, 2, 2], 'output_head': 'dense_sigmoid', 'kernel_size': 3,
    'init_stddev': 0.02, 'bn_momentum': 0.99, 'bn_epsilon': 0.001, 'iaf_depth': 0, 'iaf_width': 320,
    'prior_flow_depth': 0, 'prior_flow_width': 320,
    # training
    'batch_size': 256, 'num_epoch': 100, 'learning_rate': 0.0005, 'learning_rate_decay': 1.0,
    'kl_schedule': 'constant', 'kl_warmup_epochs': 10, 'kl_cycle_epochs': 10, 'kl_cycle_ramp': 0.5, 'free_bits': 0.0,
    'clip_gradient_norm': 0.0,
    'objective': 'elbo', 'train_samples': 1, 'iwae_start_epoch': 0, 'save_every': 5, 'summary_every': 50, 'seed': 0,
    'deterministic': True, 'num_threads': 0, 'precision': 'float32',
    # several devices and machines (docs/distributed.md); defaults: one process, one device
    'num_clones': 1, 'clone_on_cpu': False, 'worker_replicas': 1, 'num_ps_tasks': 0, 'job_name': 'worker', 'task': 0,
    'ps_hosts': [], 'worker_hosts': [], 'sync_replicas': True,
    # run folder
    'run_directory': 'MNIST', 'model_directory': 'models', 'log_directory': 'logs', 'real_directory': 'op-real',
    'recons_directory': 'op-recons', 'gen_directory': 'op-gen',
    # sample quality (vae_inference.py --fid)
    'fid_cache_directory': '.cache/fid',
}

# The literature's protocol (Burda et al. 2015): Bernoulli decoder, dynamically binarised MNIST, test -log p(x)
# from k=5000 importance samples (python vae.py --dataset MNIST_bernoulli, then python vae_inference.py
# --run_directory MNIST-bernoulli --evaluate --k 5000). Sizes, epochs and schedules chosen by experiment
# (docs/results.md).
config_mnist_bernoulli = dict(
    config_mnist, likelihood='bernoulli', binarize=True, run_directory='MNIST-bernoulli',
    z_dim=32, encoder_filters=[64, 128, 128], encoder_strides=[2, 2, 1],  # 28 -> 7x7x128
    decoder_filters=[64, 64, 1], decoder_strides=[1, 2, 2], output_head='conv_sigmoid',  # 7 -> 28x28x1 logits
    batch_size=128, num_epoch=130, learning_rate=0.003, learning_rate_decay=0.98,
    kl_schedule='linear', kl_warmup_epochs=10, save_every=10,
    objective='iwae', train_samples=5, iwae_start_epoch=100,  # 100 epochs of the ELBO, then 30 of IWAE k=5
)

# The likelihood preset with an inverse autoregressive flow of 2 steps of 320 units on q(z|x) (Kingma et al. 2016,
# Table 1's 'depth 2, width 320'), otherwise MNIST_bernoulli's model and schedule (python vae.py --dataset MNIST_iaf).
config_mnist_iaf = dict(config_mnist_bernoulli, iaf_depth=2, iaf_width=320, run_directory='MNIST-iaf')

# Both flows on the latents: MNIST_iaf's posterior and a masked autoregressive flow prior of 2 steps of 320 units
# (python vae.py --dataset MNIST_flows).
config_mnist_flows = dict(config_mnist_iaf, prior_flow_depth=2, prior_flow_width=320, run_directory='MNIST-flows',
                          clip_gradient_norm=50.0)  # the flows' loss spikes now and then: clip at 3.5x the
                                                    # median gradient norm (14 after 8 epochs, the largest of 60: 21)

# A 2-D latent space for the paper's Figure 4 manifold picture (python vae.py --dataset MNIST_2d).
config_mnist_2d = dict(config_mnist, z_dim=2, run_directory='MNIST-2d')

# Dai & Wipf 2019's first stage for the two-stage sampler (and the sharpest decoder for samples): a Gaussian decoder
# with one learned variance gamma_x^2 on the grey levels; as it falls, the used latent dimensions' posteriors sharpen
# and the rest close to the prior, so ex-post densities (vae_inference.py --sampler) fit the used ones.
config_mnist_sharp = dict(
    config_mnist_bernoulli, likelihood='gaussian_learned', decoder_variance='global', decoder_min_variance=1e-4,
    binarize=False, z_dim=64, objective='elbo', train_samples=1, iwae_start_epoch=0, num_epoch=40,
    learning_rate_decay=0.94, save_every=5, run_directory='MNIST-sharp',
)

# CelebA faces at 64x64 (the original's second experiment): python vae.py --dataset celebA
config_celebA = dict(
    config_mnist,
    dataset='celebA', data_directory='celebA/data/img_align_celeba', partition_file='', celebA_crop='closecrop',
    celebA_cache=False, celebA_cache_directory='celebA/cache', num_test_images=1000,
    image_height=64, image_width=64, image_channels=3,  # images scaled to [-1, 1]
    z_dim=128, batch_size=128, num_epoch=100, learning_rate=0.0002, kl_weight=0.0001,
    encoder_filters=[64, 128, 256, 512], encoder_strides=[2, 2, 2, 1],  # 64 -> 8x8x512
    decoder_filters=[256, 128, 64, 3], decoder_strides=[2, 2, 2, 1],    # 8 -> 64x64x3
    kernel_size=5, output_head='conv_tanh', summary_every=20, run_directory='celebA',
)

configs = {
    'MNIST': config_mnist,
    'MNIST_bernoulli': config_mnist_bernoulli,
    'MNIST_iaf': config_mnist_iaf,
    'MNIST_flows': config_mnist_flows,
    'MNIST_2d': config_mnist_2d,
    'MNIST_sharp': config_mnist_sharp,
    'celebA': config_celebA,
}

# What every key means, in the groups `--help` lists them in: the one place a key is explained.
descriptions = {
    'data': {
        'dataset': "the dict of config.py to start from; its own 'dataset' key names the loader (MNIST or celebA)",
        'data_directory': 'MNIST: folder of the four IDX files (downloaded there if missing); celebA: the folder of '
                          '000001.jpg ... 202599.jpg (178x218)',
        'image_height': 'image height in pixels',
        'image_width': 'image width in pixels',
        'image_channels': 'channels: 1 greyscale, 3 colour',
        'binarize': "train on a fresh Bernoulli(intensity) draw of each batch's pixels, score on one fixed seeded "
                    "binarisation of the test set (for likelihood bernoulli)",
        'test_seed': 'seeds the fixed binarisation of the test set: the same test set for every run, whatever its '
                     'seed',
        'num_train_images': 'train on the first this many training images only (0 = all): quick trials',
        'num_test_images': 'test images for the test ELBO at each save and for inference (0 = all)',
        'partition_file': "list_eval_partition.txt; '' = look for it in data_directory, else split by file number "
                          '(train 1-162770, validation -182637, test -202599)',
        'celebA_crop': "'closecrop': the central 140x140 box resized to 64x64; 'resizecrop': resized to 64x78, "
                       'rows 7..70',
        'celebA_cache': 'train from a uint8 array of all crops, built once (about 2 GB) and reused',
        'celebA_cache_directory': 'where the cache lives; its file name encodes the crop and the file list',
    },
    'model': {
        'z_dim': 'latent dimensions',
        'likelihood': "decoder p(x|z): 'gaussian' (the original: MSE + kl_weight * KL, fixed variance "
                      "kl_weight * D / 2), 'gaussian_learned' or 'bernoulli'",
        'kl_weight': "weight of the KL term against the per-pixel MSE (likelihood 'gaussian'; it sets the "
                     "decoder's variance)",
        'decoder_variance': "'gaussian_learned': one learned variance per 'pixel', or one 'global'",
        'decoder_min_variance': "'gaussian_learned': floor under the learned variance",
        'encoder_filters': 'output channels of the encoder convolutions',
        'encoder_strides': 'their strides',
        'decoder_filters': 'output channels of the decoder transposed convolutions',
        'decoder_strides': 'their strides (MNIST: 4x4 -> 32x32)',
        'output_head': "'dense_sigmoid': BN-ReLU, a dense layer to the pixels, sigmoid (images in [0, 1]); "
                       "'conv_sigmoid' / 'conv_tanh': the last transposed conv is the image, through sigmoid "
                       '([0, 1]) / tanh ([-1, 1])',
        'kernel_size': 'square kernel of every (transposed) convolution',
        'init_stddev': 'stddev of the truncated-normal initial weights',
        'bn_momentum': 'decay of the batch-norm moving averages used at inference',
        'bn_epsilon': 'batch-norm variance epsilon',
        'iaf_depth': 'steps of inverse autoregressive flow on q(z|x) (Kingma et al. 2016, autoregressive_flows.py); 0 = the '
                     'factorised Gaussian posterior',
        'iaf_width': "units of each IAF step's two hidden layers (MADE) and of the encoder's context for them",
        'prior_flow_depth': 'steps of masked autoregressive flow on N(0, I) as the prior p(z) (Papamakarios et al. '
                            '2017, autoregressive_flows.py); 0 = the N(0, I) prior',
        'prior_flow_width': "units of each prior step's two hidden layers (MADE)",
    },
    'training': {
        'batch_size': 'images per training step (the last partial batch of an epoch is dropped)',
        'num_epoch': 'passes over the training set',
        'learning_rate': 'Adam step size',
        'learning_rate_decay': "Adam's step size is learning_rate * this ** epoch (1 = constant)",
        'kl_schedule': "the KL term's annealing factor over training, a function of the global step: 'constant' "
                       "1 (the original), 'linear' warm-up from 0 to 1 over kl_warmup_epochs, 'cyclical' annealing "
                       '(kl_cycle_epochs, kl_cycle_ramp); the test ELBO and every metric weigh the KL by 1',
        'kl_warmup_epochs': "'linear': epochs to reach full weight",
        'kl_cycle_epochs': "'cyclical': epochs in one cycle",
        'kl_cycle_ramp': "'cyclical': fraction of each cycle spent rising from 0 to 1",
        'free_bits': "nats per latent dimension the KL term lets through free (Kingma et al. 2016: a dimension's "
                     'batch-mean KL below it gets no gradient); 0 = off',
        'clip_gradient_norm': "each update's gradient scaled down to this global norm when above it (a batch whose "
                              'loss spikes moves the weights no further than this); 0 = off',
        'objective': "'elbo', or 'iwae': the importance-weighted bound of train_samples samples (Burda et al. "
                     '2015); the same loss for train_samples 1',
        'train_samples': 'samples of q(z|x) per training image (the decoder runs this many times per image)',
        'iwae_start_epoch': "'iwae': epochs trained on the one-sample ELBO before the IWAE bound takes over (the "
                            'ELBO epochs cost 1/train_samples of the decoder passes); 0 = IWAE from the start',
        'save_every': 'checkpoint and image grids at epoch 0, every this many epochs, and the last',
        'summary_every': 'TensorBoard scalars and histograms every this many steps',
        'seed': 'seeds the weights, the shuffling, the sampling noise and the fixed grids',
        'deterministic': 'TensorFlow op determinism: same seed, same machine -> same losses',
        'num_threads': 'intra-op threads (0 = one per core)',
        'precision': "training arithmetic: 'float32', 'mixed_bfloat16' (oneDNN rewrite: CPUs with AMX / "
                     "AVX512-BF16) or 'mixed_float16' (CUDA GPUs, loss scaling); weights, checkpoints and every "
                     'metric stay float32',
    },
    'several devices and machines': {
        'num_clones': "towers: each step's batch is split over this many devices, the gradients averaged into one "
                      'update (batch_size must divide by it)',
        'clone_on_cpu': 'put the towers on CPU devices (one per tower) instead of the GPUs',
        'worker_replicas': 'worker processes training one model (> 1 needs num_ps_tasks >= 1)',
        'num_ps_tasks': 'parameter-server processes holding the variables (0 = in this process)',
        'job_name': "this process's job: 'worker' (trains) or 'ps' (serves variables)",
        'task': "this process's index in its job; worker 0 is the chief (saves everything)",
        'ps_hosts': 'host:port of each parameter server, e.g. 10.0.0.1:2222',
        'worker_hosts': 'host:port of each worker; TF_CONFIG, when set, gives the cluster and overrides '
                        'worker_replicas, num_ps_tasks, job_name, task and the hosts',
        'sync_replicas': 'synchronous updates: one step averages a gradient from every worker '
                         '(SyncReplicasOptimizer); false: each worker applies its own (asynchronous)',
    },
    'run folder': {
        'run_directory': 'the run folder (its config.json records the run); the folders below live inside it',
        'model_directory': 'checkpoints model_<epoch>',
        'log_directory': 'TensorBoard event files (and the projector)',
        'real_directory': '5x5 grids of the fixed test images, one per saved epoch',
        'recons_directory': '5x5 grids of their reconstructions',
        'gen_directory': '5x5 grids decoded from 25 fixed prior samples (the frames of the GIF)',
    },
    'sample quality': {
        'fid_cache_directory': "vae_inference.py --fid: the Inception weights (downloaded once, SHA-1 checked) and "
                               "the test sets' feature statistics",
    },
}
