"""Hyper-parameters, one dict per dataset. Edit the dict of the dataset you train on.

Any key can also be overridden for one run from the command line, typed like its default:
    python vae.py --dataset MNIST --z_dim 32 --encoder_filters 16,32,64 --deterministic false
"""

# The dataset `python vae.py` and `python vae_inference.py` use when no --dataset is given.
dataset = 'MNIST'

config_mnist = {
    'dataset': 'MNIST',               # which loader reads the data (utils.load_dataset)
    'data_directory': 'MNIST/data',   # folder with the four MNIST IDX files; downloaded there if missing
    'image_height': 28,               # input image height in pixels
    'image_width': 28,                # input image width in pixels
    'image_channels': 1,              # 1 = greyscale
    'z_dim': 16,                      # latent dimensions
    'batch_size': 256,                # images per training step (the last partial batch is dropped)
    'num_epoch': 100,                 # passes over the training set
    'learning_rate': 0.0005,          # Adam step size
    'kl_weight': 0.0005,              # weight of the KL term against the per-pixel MSE ('gaussian' likelihood)
    'kl_schedule': 'constant',        # weight of the KL term over training, a function of the global step:
                                      # 'constant' 1 (the original), 'linear' warm-up from 0 to 1 over
                                      # kl_warmup_epochs, 'cyclical' annealing (kl_cycle_epochs, kl_cycle_ramp); the
                                      # test ELBO and every metric always weigh the KL by 1
    'kl_warmup_epochs': 10,           # 'linear': epochs to reach full weight
    'kl_cycle_epochs': 10,            # 'cyclical': epochs in one cycle
    'kl_cycle_ramp': 0.5,             # 'cyclical': fraction of each cycle spent rising from 0 to 1
    'free_bits': 0.0,                 # nats per latent dimension the KL term ignores (Kingma et al. 2016: each
                                      # dimension's batch-mean KL below this gets no gradient); 0 = off
    'objective': 'elbo',              # 'elbo', or 'iwae': the importance-weighted bound of train_samples samples
                                      # (Burda et al. 2015); the two are the same loss for train_samples 1
    'train_samples': 1,               # samples of q(z|x) per training image (decoder memory and time grow with it)
    'learning_rate_decay': 1.0,       # Adam's step size is learning_rate * this ** epoch (1 = constant)
    'likelihood': 'gaussian',         # decoder p(x|z): 'gaussian' (the original: MSE + kl_weight * KL, fixed
                                      # variance kl_weight * D / 2), 'gaussian_learned' or 'bernoulli'
    'decoder_variance': 'pixel',      # 'gaussian_learned': one learned variance per 'pixel', or one 'global'
    'decoder_min_variance': 0.001,    # 'gaussian_learned': floor under the learned variance
    'binarize': False,                # train on a fresh Bernoulli(intensity) binarisation of each batch, evaluate
                                      # on one fixed seeded binarisation of the test set (for 'bernoulli')
    'init_stddev': 0.02,              # stddev of the truncated-normal initial weights
    'encoder_filters': [16, 32, 64],  # output channels of the encoder convolutions
    'encoder_strides': [2, 2, 2],     # their strides
    'decoder_filters': [64, 32, 1],   # output channels of the decoder transposed convolutions
    'decoder_strides': [2, 2, 2],     # their strides (4x4 -> 32x32 here)
    'output_head': 'dense_sigmoid',   # 'dense_sigmoid': BN-ReLU, dense to the pixels, sigmoid (images in [0, 1]);
                                      # 'conv_sigmoid' / 'conv_tanh': the last transposed conv is the image, through
                                      # sigmoid ([0, 1]) / tanh ([-1, 1])
    'kernel_size': 3,                 # square kernel of every (transposed) convolution
    'bn_momentum': 0.99,              # decay of the batch-norm moving averages used at inference
    'bn_epsilon': 0.001,              # batch-norm variance epsilon
    'save_every': 5,                  # checkpoint and image grids at epoch 0, every this many epochs, and the last
    'summary_every': 50,              # TensorBoard scalars every this many steps
    'seed': 0,                        # seeds the weights, the shuffling, the sampling noise and the fixed grids
    'test_seed': 0,                   # seeds the one fixed binarisation of the test set (binarize): the same
                                      # test set for every run, whatever its seed
    'deterministic': True,            # TensorFlow op determinism: same seed, same machine -> same losses
    'num_threads': 0,                 # intra-op threads (0 = one per core)
    'precision': 'float32',           # training arithmetic: 'float32', 'mixed_bfloat16' (oneDNN rewrite: CPUs with
                                      # AMX / AVX512-BF16) or 'mixed_float16' (CUDA GPUs, loss scaling); weights,
                                      # checkpoints and every metric stay float32
    'num_train_images': 0,            # train on the first this many training images only (0 = all): quick trials
    # Several devices and machines (README, "Several devices, several machines"). Defaults: one process, one device.
    'num_clones': 1,                  # towers: each step's batch is split over this many devices, the gradients
                                      # averaged into one update (batch_size must divide by it)
    'clone_on_cpu': False,            # put the towers on CPU devices (one per tower) instead of the GPUs
    'worker_replicas': 1,             # worker processes training one model (> 1 needs num_ps_tasks >= 1)
    'num_ps_tasks': 0,                # parameter-server processes holding the variables (0 = in this process)
    'job_name': 'worker',             # this process's job: 'worker' (trains) or 'ps' (serves variables)
    'task': 0,                        # this process's index in its job; worker 0 is the chief (saves everything)
    'ps_hosts': [],                   # host:port of each parameter server, e.g. 10.0.0.1:2222
    'worker_hosts': [],               # host:port of each worker. TF_CONFIG, when set, gives the cluster and
                                      # overrides worker_replicas, num_ps_tasks, job_name, task and the hosts
    'sync_replicas': True,            # synchronous updates: one step averages a gradient from every worker
                                      # (SyncReplicasOptimizer); False: each worker applies its own (asynchronous)
    'run_directory': 'MNIST',         # the run folder; the folders below live inside it
    'model_directory': 'models',      # checkpoints model_<epoch>
    'log_directory': 'logs',          # TensorBoard event files
    'real_directory': 'op-real',      # 5x5 grids of the fixed test images, one per saved epoch
    'recons_directory': 'op-recons',  # 5x5 grids of their reconstructions
    'gen_directory': 'op-gen',        # 5x5 grids decoded from 25 fixed prior samples (frames of the GIF)
}

# The literature's protocol (Burda et al. 2015): Bernoulli decoder, dynamically binarised MNIST, test -log p(x)
# from k=5000 importance samples (python vae.py --dataset MNIST_bernoulli, then python vae_inference.py
# --dataset MNIST_bernoulli --evaluate --k 5000). Sizes, epochs and schedules chosen by experiment (README).
config_mnist_bernoulli = dict(
    config_mnist, likelihood='bernoulli', binarize=True, run_directory='MNIST-bernoulli',
    z_dim=32, encoder_filters=[32, 64, 64], decoder_filters=[64, 32, 1],
    batch_size=128, num_epoch=120, learning_rate=0.001, learning_rate_decay=0.98,
    kl_schedule='linear', kl_warmup_epochs=10, save_every=10,
)

# A 2-D latent space for the paper's Figure 4 manifold picture (python vae.py --dataset MNIST_2d).
config_mnist_2d = dict(config_mnist, z_dim=2, run_directory='MNIST-2d')

# CelebA faces at 64x64 (the original's second experiment): python vae.py --dataset celebA
config_celebA = dict(
    config_mnist,
    dataset='celebA',
    data_directory='celebA/data/img_align_celeba',  # the folder of 000001.jpg ... 202599.jpg (178x218)
    partition_file='',                # list_eval_partition.txt; '' = look for it in data_directory, else split
                                      # by file number (train 1-162770, validation -182637, test -202599)
    celebA_crop='closecrop',          # 'closecrop': central 140x140 box resized to 64x64; 'resizecrop':
                                      # resized to 64x78, rows 7..70
    celebA_cache=False,               # train from a uint8 array of all crops, built once (about 2 GB) and reused
    celebA_cache_directory='celebA/cache',  # where the cache lives; its name encodes the crop and file list
    num_test_images=1000,             # test images for the test ELBO at each save and for inference (0 = all)
    image_height=64, image_width=64, image_channels=3,  # images scaled to [-1, 1]
    z_dim=128, batch_size=128, num_epoch=100, learning_rate=0.0002, kl_weight=0.0001,
    encoder_filters=[64, 128, 256, 512], encoder_strides=[2, 2, 2, 1],  # 64 -> 8x8x512
    decoder_filters=[256, 128, 64, 3], decoder_strides=[2, 2, 2, 1],    # 8 -> 64x64x3
    kernel_size=5,
    output_head='conv_tanh',          # the last transposed conv is the image, through tanh
    summary_every=20,
    run_directory='celebA',
)

configs = {
    'MNIST': config_mnist,
    'MNIST_bernoulli': config_mnist_bernoulli,
    'MNIST_2d': config_mnist_2d,
    'celebA': config_celebA,
}
