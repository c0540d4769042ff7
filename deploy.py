"""Several devices and several machines, in the spirit of TF-slim's deployment/model_deploy.py.

Towers: clones of the model on num_clones devices, each on its share of the batch, their gradients averaged into
one update. A parameter-server cluster: this process's server, the variables placed on the parameter servers,
SyncReplicasOptimizer, and the MonitoredTrainingSession a worker trains in. Also the session of a single process,
so that vae.train runs the same loop in either (a TrainingSession).
"""
import collections
import contextlib
import random
import socket
import threading
import time

import process
import run_folder
from process import UserError

tf, tf1 = process.tf, process.tf1


def session_config(config, training=False):
    """Threads and devices of a session; a training session with a mixed precision also gets TensorFlow's own
    graph rewrite (grappler's auto mixed precision): the oneDNN bfloat16 variant for the CPU's ops, the CUDA
    float16 one for the GPU's. Inference, evaluation and the data pipeline stay float32."""
    threads = config['num_threads']
    # clone_on_cpu towers each need a CPU device of their own: /cpu:0 ... /cpu:<num_clones - 1>.
    cpus = config['num_clones'] if config['clone_on_cpu'] else 1
    proto = tf1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads,
                            device_count={'CPU': cpus}, allow_soft_placement=True)
    rewrite = proto.graph_options.rewrite_options
    if training and config['precision'] == 'mixed_bfloat16':
        rewrite.auto_mixed_precision_onednn_bfloat16 = rewrite.ON
    elif training and config['precision'] == 'mixed_float16':
        rewrite.auto_mixed_precision = rewrite.ON
    return proto


def cpu_flags():
    """The CPU feature flags the kernel reports (lscpu's Flags line)."""
    try:
        with open('/proc/cpuinfo') as f:
            return next((set(line.split(':', 1)[1].split()) for line in f if line.startswith('flags')), set())
    except OSError:
        return set()


def visible_gpus():
    """The GPUs TensorFlow sees (device discovery's C++ notices kept off the console)."""
    with process.silence_stderr():
        return tf.config.list_physical_devices('GPU')


def precision_line(config):
    """One line naming the training precision and whether this machine accelerates it; mixed_float16 without a
    GPU is a one-line error."""
    precision = config['precision']
    if precision == 'float32':
        return 'precision float32'
    gpus = visible_gpus()
    if precision == 'mixed_float16':
        if not gpus:
            raise UserError('precision mixed_float16 needs a CUDA GPU and none is visible; pass --precision '
                            'mixed_bfloat16 (CPUs with AMX or AVX512-BF16) or float32')
        major, minor = tf.config.experimental.get_device_details(gpus[0]).get('compute_capability', (0, 0))
        fast = major >= 7
        return (f'precision mixed_float16 (CUDA float16 rewrite, dynamic loss scaling): GPU compute capability '
                f'{major}.{minor}, ' + ('tensor cores run float16' if fast else 'no tensor cores: likely slower'))
    found = [name for flag, name in (('amx_bf16', 'AMX-BF16'), ('avx512_bf16', 'AVX512-BF16')) if flag in cpu_flags()]
    return ('precision mixed_bfloat16 (oneDNN bfloat16 rewrite of the CPU ops): '
            + (f'this CPU has {" and ".join(found)}' if found else
               'this CPU has neither AMX-BF16 nor AVX512-BF16: it will likely be slower than float32')
            + ('; the GPU ops stay float32' if gpus else ''))


# ---------------------------------------------------------------- towers

VARIABLE_OPS = ('Variable', 'VariableV2', 'VarHandleOp')


def tower_devices(config):
    """The device of each tower: the GPUs in order, or CPU devices with clone_on_cpu ('' = TensorFlow's choice)."""
    count = config['num_clones']
    if config['clone_on_cpu']:
        return [f'/cpu:{i}' for i in range(count)]
    if count == 1:
        return ['']
    gpus = len(visible_gpus())
    if count > gpus:
        raise UserError(f'num_clones={count} towers need {count} GPUs but {gpus} are visible; pass '
                        f'--clone_on_cpu true to put them on CPU devices, or --num_clones {max(gpus, 1)}')
    return [f'/gpu:{i}' for i in range(count)]


def on_device(device):
    """A device function: ops on `device`, variables left to the enclosing placement (the parameter servers,
    or TensorFlow's default device), so every tower shares one copy of each variable."""
    return lambda op: '' if op.type in VARIABLE_OPS else device


def merge_towers(towers):
    """The towers' endpoints (namedtuples of one type) as one: scalars averaged (each tower's loss is a mean over
    an equal share of the batch, so this is the mean over the whole batch), per-image tensors concatenated in batch
    order."""
    if len(towers) == 1:
        return towers[0]
    merge = lambda values: tf.add_n(values) / len(values) if values[0].shape.ndims == 0 else tf.concat(values, 0)
    return type(towers[0])(*[merge(list(values)) for values in zip(*towers)])


def average_gradients(tower_gradients):
    """[(gradient, variable)] averaged over towers: the gradient of the whole-batch mean loss."""
    if len(tower_gradients) == 1:
        return tower_gradients[0]
    return [(tf.add_n([gradients[i][0] for gradients in tower_gradients]) / len(tower_gradients), variable)
            for i, (_, variable) in enumerate(tower_gradients[0])]


def create_clones(config, images, model_fn, optimizer):
    """In-graph replication: model_fn(share) on each tower's device and share of the batch (a namedtuple with a
    `loss`). Returns (the towers' endpoints merged, the gradients of the whole-batch loss) for one update."""
    towers, tower_gradients = [], []
    devices = tower_devices(config)
    for i, (device, share) in enumerate(zip(devices, tf.split(images, len(devices)))):
        with tf1.device(on_device(device)), tf1.name_scope(f'tower{i}'):
            towers.append(model_fn(share))
            tower_gradients.append(optimizer.compute_gradients(towers[-1].loss))
    return merge_towers(towers), average_gradients(tower_gradients)


# ---------------------------------------------------------------- cluster

def free_ports(count, rng=random.SystemRandom()):
    """count TCP ports free on this machine, for loopback clusters (tests, benchmark). The servers bind them later
    and TensorFlow's gRPC server refuses a shared port, so they cannot be held till then: they are drawn below the
    kernel's ephemeral range, which it never hands to outgoing connections or to other programs' bind(0), so only a
    program that asks for that very port could take one in between."""
    with open('/proc/sys/net/ipv4/ip_local_port_range') as f:
        ephemeral_start = int(f.read().split()[0])
    ports = []
    for port in rng.sample(range(10000, ephemeral_start), ephemeral_start - 10000):
        with socket.socket() as probe:
            try:
                probe.bind(('0.0.0.0', port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise UserError(f'fewer than {count} free TCP ports between 10000 and {ephemeral_start}')


def cluster_from_config(config):
    """{'ps': [host:port, ...], 'worker': [...]} for a multi-process run, or None for one process. The keys were
    resolved and checked with the rest of the configuration (command_line.parse_command_line: TF_CONFIG, when set,
    gives the cluster and this process's job and task)."""
    if config['worker_replicas'] == 1 and config['num_ps_tasks'] == 0:
        return None
    return {'ps': config['ps_hosts'], 'worker': config['worker_hosts']}


def is_chief(config, cluster):
    """Whether this process is the one that restores, saves, summarises and takes SIGINT / SIGTERM: a single
    process, or worker 0 of a cluster."""
    return cluster is None or config['task'] == 0


def variable_placement(config, cluster):
    """Where the training graph is built: on a cluster worker, variables on the parameter servers (round robin)
    and ops on this worker; in one process, TensorFlow's default placement."""
    if not cluster:
        return contextlib.nullcontext()
    return tf1.device(tf1.train.replica_device_setter(ps_tasks=len(cluster['ps']), cluster=cluster,
                                                      worker_device=f'/job:worker/task:{config["task"]}'))


def replicated_optimizer(optimizer, config, cluster):
    """With synchronous replicas, each update waits for a gradient from every worker and applies their mean."""
    if not (cluster and config['sync_replicas']):
        return optimizer
    workers = len(cluster['worker'])
    return tf1.train.SyncReplicasOptimizer(optimizer, replicas_to_aggregate=workers, total_num_replicas=workers)


def start_server(config, cluster):
    """This process's tf1.train.Server in the cluster (TensorFlow's gRPC runtime)."""
    tf1.logging.set_verbosity(tf1.logging.ERROR)  # compat.v1's deprecation notices would bury the progress lines
    job, task = config['job_name'], config['task']
    address = cluster[job][task]
    try:
        with process.silence_stderr():
            return tf1.train.Server(tf1.train.ClusterSpec(cluster), job_name=job, task_index=task,
                                    config=session_config(config, training=True))
    except (tf.errors.OpError, ValueError) as error:
        raise UserError(f'cannot start {job} task {task} on {address} ({str(error).splitlines()[0]}); is the '
                        f'port in use, or the address not this machine\'s? fix --{job}_hosts or TF_CONFIG')


def finished_queues(cluster):
    """A queue on each parameter server that every worker puts its task number in when it is done."""
    queues = []
    for task in range(len(cluster['ps'])):
        with tf1.device(f'/job:ps/task:{task}'):
            queues.append(tf1.FIFOQueue(len(cluster['worker']), tf.int32, shapes=[[]],
                                        shared_name=f'finished_workers_{task}'))
    return queues


def serve_parameters(config, cluster):
    """A parameter server: hold the variables placed here until every worker has put itself in the queue."""
    server = start_server(config, cluster)
    with tf.Graph().as_default():
        wait = finished_queues(cluster)[config['task']].dequeue_many(len(cluster['worker']))
        print(f'parameter server {config["task"]} serving on {cluster["ps"][config["task"]]}; it exits when all '
              f'{len(cluster["worker"])} workers have finished', flush=True)
        with tf1.Session(server.target) as sess:
            sess.run(wait)
    print(f'parameter server {config["task"]}: every worker finished')


def ignore_cancelled_queue_runner():
    """The chief's gradient queue runner is still waiting for the next gradients when its session closes at the
    end; closing cancels that wait, which is how it ends, not an error to print."""
    default = threading.excepthook
    threading.excepthook = lambda args: None if issubclass(args.exc_type, tf.errors.CancelledError) else default(args)


# ---------------------------------------------------------------- sessions

# What the training loop needs of a session: run(fetches) for a training step (through the hooks, on a cluster),
# raw(fn) to call fn(tf_session) outside them (saves, summaries: not training steps), should_stop().
TrainingSession = collections.namedtuple('TrainingSession', 'run raw should_stop')


@contextlib.contextmanager
def local_session(config, graph, model, checkpoint):
    """One process: a plain session, restored from checkpoint (shape-checked) or freshly initialised."""
    graph.finalize()  # a training loop that adds ops would leak memory every step: forbid it
    with tf1.Session(graph=graph, config=session_config(config, training=True)) as sess:
        if checkpoint:
            run_folder.restore_checkpoint(sess, model.saver, checkpoint, config)
        else:
            sess.run(model.init)
        yield TrainingSession(sess.run, lambda fn: fn(sess), lambda: False)


@contextlib.contextmanager
def cluster_session(config, cluster, server, graph, model, checkpoint, last_step):
    """A cluster worker: a MonitoredTrainingSession on this worker's server. The chief (worker 0) initialises or
    restores the variables on the parameter servers; the others wait for it, then join. With sync_replicas the
    chief also runs the gradient queue and, at the end, hands every worker a last token so none waits forever.
    When the session ends, this worker tells each parameter server that it has finished."""
    task, workers = config['task'], len(cluster['worker'])
    chief = is_chief(config, cluster)
    # This worker's sessions see only the parameter servers and itself, not wait for the other workers.
    worker_config = session_config(config, training=True)
    worker_config.device_filters.extend(['/job:ps', f'/job:worker/task:{task}'])
    with graph.as_default():
        finished = tf.group([queue.enqueue(task) for queue in finished_queues(cluster)])
        uninitialized = None if chief else tf1.report_uninitialized_variables(tf1.global_variables())
        # Synchronous: no tokens at the start, so the first update waits for a gradient from every worker.
        hooks = [model.optimizer.make_session_run_hook(chief, num_tokens=0)] if config['sync_replicas'] else []
        release_workers = model.optimizer.get_init_tokens_op(workers) if chief and config['sync_replicas'] \
            else tf.no_op()
        scaffold = tf1.train.Scaffold(
            init_op=model.init, saver=model.saver,
            local_init_op=tf.group(tf1.train.Scaffold.default_local_init_op(), model.input.initializer),
            local_init_feed_dict=model.input.feed(0, 0))  # the worker's endless shard
    if checkpoint:  # MonitoredTrainingSession restores the one the state file names: make it this one
        tf1.train.update_checkpoint_state(run_folder.run_path(config, 'model_directory'), checkpoint)
    hooks.append(tf1.train.StopAtStepHook(last_step=last_step))
    if not chief:  # poll for the chief's initialisation each second (the session's own wait polls every 30 s)
        with tf1.Session(server.target, graph=graph, config=worker_config) as sess:
            while len(sess.run(uninitialized)):
                time.sleep(1)
    ignore_cancelled_queue_runner()
    try:
        with graph.as_default(), tf1.train.MonitoredTrainingSession(
                master=server.target, is_chief=chief, scaffold=scaffold, hooks=hooks, config=worker_config,
                checkpoint_dir=run_folder.run_path(config, 'model_directory') if chief else None,
                save_checkpoint_secs=None, save_checkpoint_steps=None, save_summaries_steps=None,
                save_summaries_secs=None, log_step_count_steps=None, stop_grace_period_secs=2) as sess:
            raw = lambda fn: sess.run_step_fn(lambda step_context: fn(step_context.session))
            yield TrainingSession(sess.run, raw, sess.should_stop)
            raw(lambda tf_session: tf_session.run(release_workers))
    except tf.errors.CancelledError as error:
        if 'sync_token_q' not in str(error):
            raise
        # A stopped chief's token queue stays closed on the parameter servers; TensorFlow cannot reopen it.
        raise UserError('the parameter servers hold the token queue of a chief that stopped, and it is '
                        'closed; start the parameter servers again, then the workers (the chief resumes '
                        'from its newest checkpoint)')
    with tf1.Session(server.target, graph=graph, config=worker_config) as sess:
        sess.run(finished)
