"""The process: TensorFlow imported quietly, errors the user can fix, signals, and the one way a file is written.

Importing it keeps TensorFlow's C++ start-up notices off stderr and turns eager execution off (TensorFlow 1.x-style
graphs and sessions throughout): every module takes tf and tf1 from here. A UserError is a problem the user can fix,
printed as one line with exit status 1 by exit_on_user_error; stop_requests collects SIGINT / SIGTERM between
training steps; write_atomically and write_folder_atomically are the one way a file or folder is written.
"""
import contextlib
import errno
import os
import shutil
import signal
import sys
import tempfile


@contextlib.contextmanager
def silence_stderr():
    """Send file descriptor 2 to /dev/null for a while: TensorFlow's C++ start-up notices (oneDNN, CPU
    features) ignore TF_CPP_MIN_LOG_LEVEL and would bury a one-line error. Python exceptions still show."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's informational logging off the console
with silence_stderr():
    import tensorflow as tf
tf1 = tf.compat.v1
tf1.disable_eager_execution()  # TensorFlow 1.x-style graphs and sessions throughout


class UserError(Exception):
    """A problem the user can fix; the scripts print it as one line and exit non-zero."""


def exit_on_user_error(main):
    """Run main(); a UserError becomes `error: ...` on stderr and exit status 1, Ctrl-C a line and 130."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the scripts ignore it while TensorFlow loads
    try:
        main()
    except UserError as error:  # one line, whatever the paths it names hold (a newline in a folder's name)
        print('error: ' + str(error).replace('\r', '\\r').replace('\n', '\\n'), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # not in training (which saves a checkpoint and exits by itself)
        print('interrupted; every file written before it is kept whole, none is left half-written', file=sys.stderr)
        sys.exit(130)


@contextlib.contextmanager
def stop_requests(enabled=True):
    """Collect SIGINT / SIGTERM in a list instead of dying mid-step (training) or mid-evaluation; the previous
    handlers come back after. Not enabled: an empty list, the signals left as they are."""
    received = []
    signals = (signal.SIGINT, signal.SIGTERM) if enabled else ()
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in signals}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------- the one way a file is written; a small text file read

# The umask, read once (reading it sets it, so it is set back at once): the permissions write_atomically and
# write_folder_atomically give what they create, as open() and os.makedirs would.
UMASK = os.umask(0o022)
os.umask(UMASK)


def write_atomically(path, write, mode='wb'):
    """The one way a file is written: write(file) into a temporary file of a unique name in path's folder,
    flushed to disk, then renamed over path, so a reader finds the old file or the whole new one, and two writers
    never share a temporary file. A failure (a full disk, a read-only folder, an interruption, a bad frame)
    removes the temporary file and leaves path as it was; an OSError is a one-line error."""
    folder, name = os.path.dirname(path) or '.', os.path.basename(path)
    temporary = None
    try:
        os.makedirs(folder, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f'.{name}.', suffix='.part')
        with os.fdopen(descriptor, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o666 & ~UMASK)
        os.replace(temporary, path)
    except BaseException as error:
        if temporary:
            with contextlib.suppress(OSError):
                os.remove(temporary)
        if isinstance(error, OSError):
            raise UserError(f'cannot write {path} ({error.strerror or error}); {destination_fix(path, error)}; '
                            f'{name} was left as it was') from None
        raise


def nearest_existing(path):
    """The absolute path of the nearest part of path that exists (path itself, or a folder above it)."""
    place = os.path.abspath(path)
    while not os.path.lexists(place) and place != os.path.dirname(place):
        place = os.path.dirname(place)
    return place


def destination_fix(path, error):
    """What to do when path (a file or a folder) cannot be written: move away what is in its way (a folder where
    the file goes, a file or a broken link where a folder goes), else free space or choose a writable folder."""
    place = nearest_existing(path)
    kind = 'a broken link' if os.path.islink(place) and not os.path.exists(place) else 'a file'
    if place == os.path.abspath(path):
        if os.path.isdir(path) and error.errno == errno.EISDIR:
            return f'{path} is a folder: move it away'
        if not os.path.isdir(path) and error.errno in (errno.EEXIST, errno.ENOTDIR):
            return f'{path} is {kind} where a folder goes: move it away'
    elif not os.path.isdir(place):
        return f'{place} is {kind} where a folder goes: move it away'
    if error.errno in (errno.ENOSPC, errno.EFBIG):
        return 'free some space'
    return 'free some space or choose a writable folder'


def write_folder_atomically(destination, build):
    """build(folder) fills a new folder beside destination, which is then renamed into place: destination is the
    whole result or absent, whatever happens (a full disk, Ctrl-C, SIGKILL: a hidden .<name>.*.part beside it).
    destination must be new or an empty folder."""
    if os.path.lexists(destination) and (not os.path.isdir(destination) or os.path.islink(destination)
                                         or os.listdir(destination)):
        what = 'a symbolic link' if os.path.islink(destination) else \
            'a non-empty folder' if os.path.isdir(destination) else 'a file'
        raise UserError(f'{destination} is {what}; choose a new or empty folder')
    parent, name = os.path.split(os.path.abspath(destination))
    temporary = None
    try:
        os.makedirs(parent, exist_ok=True)
        temporary = tempfile.mkdtemp(dir=parent, prefix=f'.{name}.', suffix='.part')
        os.chmod(temporary, 0o777 & ~UMASK)
        build(temporary)
        if os.path.isdir(destination):
            os.rmdir(destination)
        os.rename(temporary, destination)
    except BaseException as error:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, (OSError, tf.errors.OpError)):
            fix = destination_fix(destination, error) if isinstance(error, OSError) else \
                'free some space or choose a writable folder'
            raise UserError(f'cannot write {destination} ({error_line(error)}); {fix}; nothing was written') from None
        raise


def error_line(error):
    """The line of an OSError or TensorFlow error that says what went wrong: a graph's error message opens with
    'Graph execution error:' and the failing node's Python stack, and ends with the node's name in [[...]]; the
    line before that is the cause (a full disk's 'No space left on device', say)."""
    text = getattr(error, 'strerror', None) or getattr(error, 'message', None) or str(error) or type(error).__name__
    lines = [line.strip() for line in str(text).splitlines() if line.strip() and not line.strip().startswith('[[')]
    return lines[-1] if lines else type(error).__name__


def read_text(path, what):
    """The whole of a small text file (UTF-8), or a one-line error saying what is wrong with it: missing, a
    folder, unreadable, binary or in another encoding."""
    try:
        with open(path, 'rb') as f:
            data = f.read(1 << 24)
        if b'\0' in data:
            raise UnicodeError('it holds NUL bytes: a binary file, or UTF-16')
        return data.decode('utf-8')
    except (OSError, UnicodeError) as error:
        reason = 'it is a folder' if os.path.isdir(path) else getattr(error, 'strerror', None) or \
            (str(error) if isinstance(error, UnicodeError) and 'NUL' in str(error) else 'not UTF-8 text')
        raise UserError(f'{path} is not a readable {what} ({reason}); fix or replace it') from None
