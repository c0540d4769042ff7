"""The documentation's commands and links are real: every --flag a documented command gives vae.py, vae_inference.py or
a bench/ script exists for that script, every --dataset is a preset, and every relative link and image resolves.

The commands are the `python SCRIPT.py ...` lines of the ```bash, ```sh and bare ``` blocks of README.md, docs/*.md
and the run folders' README.md. Nothing is run: a script's flags are read from its source with ast (script_flags),
and a link's #anchor is checked against the headings of the page it points to."""
import ast
import functools
import glob
import os
import re
import shlex

import config
from conftest import ROOT

PAGES = ['README.md', *sorted(os.path.relpath(page, ROOT) for page in glob.glob(os.path.join(ROOT, 'docs', '*.md'))),
         'MNIST/README.md', 'celebA/README.md', 'MNIST/results/bernoulli/README.md']
FENCE = re.compile(r'^ *```(\w*)\n(.*?)^ *```', re.M | re.S)
SCRIPT = re.compile(r'(vae|vae_inference|bench/\w+)\.py')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
SHELL_OPERATORS = {'&', '&&', '|', '||', ';', ';;', '(', ')'}


def read(path):
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
        return f.read()


def command_lines(markdown):
    """The words of each shell line that runs `python SCRIPT.py`: backslash continuations joined, a leading `$ `
    prompt or `# ` (a command shown in a comment) dropped, trailing comments cut, and $VAR replaced by the words
    of a VAR="..." assigned earlier in the block."""
    for language, block in FENCE.findall(markdown):
        if language not in ('', 'bash', 'sh'):
            continue
        variables = {}
        lines = '\n'.join(re.sub(r'^\s*[$#]\s?', '', line) for line in block.split('\n'))
        for line in lines.replace('\\\n', ' ').split('\n'):
            if re.search(r'python \S*' + SCRIPT.pattern, line):
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                yield [part for word in lexer
                       for part in (variables[word[1:]] if word[0] == '$' and word[1:] in variables else [word])]
            elif re.match(r'\w+=', line):  # COMMON="--dataset MNIST_bernoulli ..."
                name, value = shlex.split(line, comments=True)[0].split('=', 1)
                variables[name] = shlex.split(value)


def invocations(words):
    """(script, its arguments) for each `python SCRIPT.py ...` among a command line's words."""
    for i, word in enumerate(words[:-1]):
        if word == 'python' and SCRIPT.fullmatch(words[i + 1]):
            arguments = words[i + 2:]
            end = next((j for j, argument in enumerate(arguments) if argument in SHELL_OPERATORS), len(arguments))
            yield words[i + 1], arguments[:end]


def is_text(node):
    """Whether an expression is a string literal: 'meaning', f'meaning {x}' or 'a' + 'b'."""
    if isinstance(node, ast.BinOp):
        return is_text(node.left) and is_text(node.right)
    return isinstance(node, ast.JoinedStr) or isinstance(node, ast.Constant) and isinstance(node.value, str)


@functools.lru_cache
def script_flags(script):
    """The --flags a script accepts, read from its source: --help; its argparse add_argument('--NAME') calls; and,
    when it resolves its configuration with parse_command_line, every key of config.py's presets and its own flags,
    the keys of each dict literal of (default, meaning) pairs in it (FLAGS in vae.py and vae_inference.py)."""
    flags = {'help'}
    for node in ast.walk(ast.parse(read(script))):
        if isinstance(node, ast.Call):
            called = getattr(node.func, 'attr', getattr(node.func, 'id', None))
            if called == 'add_argument':
                flags |= {a.value[2:] for a in node.args if isinstance(a, ast.Constant) and a.value.startswith('--')}
            elif called == 'parse_command_line':
                flags |= {key for preset in config.configs.values() for key in preset}
        elif isinstance(node, ast.Dict) and node.values and all(
                isinstance(value, ast.Tuple) and len(value.elts) == 2 and is_text(value.elts[1])
                for value in node.values):
            flags |= {key.value for key in node.keys if isinstance(key, ast.Constant)}
    return frozenset(flags)


def wrong_flags(page):
    """'page: command: what is wrong' for each unknown flag or preset in the page's commands."""
    problems = []
    for words in command_lines(read(page)):
        for script, arguments in invocations(words):
            for i, argument in enumerate(arguments):
                if not argument.startswith('--'):
                    continue
                name, _, value = argument[2:].partition('=')
                if name not in script_flags(script):
                    problems.append(f'{page}: {" ".join(words)}: {script} has no --{name}')
                if name == 'dataset' and (value or arguments[i + 1:i + 2] or [''])[0] not in config.configs:
                    problems.append(f'{page}: {" ".join(words)}: --dataset is not a preset of config.py')
    return problems


def anchors(page):
    """The #ids GitHub gives the page's headings: lower case, punctuation but - and _ dropped, spaces as -."""
    headings = re.findall(r'^#+ (.*)$', FENCE.sub('', read(page)), re.M)
    return {re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-') for heading in headings}


def broken_links(page):
    """'page: target: what is missing' for each relative link or image whose file or #heading does not exist."""
    problems = []
    prose = re.sub(r'`[^`\n]*`', '', FENCE.sub('', read(page)))  # a link inside code is code
    for target in LINK.findall(prose):
        if re.match(r'\w+:', target):  # https:, mailto:
            continue
        path, _, fragment = target.partition('#')
        path = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(os.path.join(ROOT, path)):
            problems.append(f'{page}: {target}: no file {path}')
        elif fragment and fragment not in anchors(path):
            problems.append(f'{page}: {target}: no heading #{fragment} in {path}')
    return problems


def test_every_documented_command_names_flags_its_script_has():
    assert len([words for page in PAGES for words in command_lines(read(page))]) > 20  # the commands were found
    problems = [problem for page in PAGES for problem in wrong_flags(page)]
    assert not problems, '\n'.join(problems)


def test_every_relative_link_and_image_exists():
    problems = [problem for page in PAGES for problem in broken_links(page)]
    assert not problems, '\n'.join(problems)


def test_every_test_the_documentation_names_exists():
    """The faults table and the pages name their tests as `test_FILE.py::test_NAME` (or `::test_NAME` after one):
    each must be a test function of that file."""
    defined = {os.path.basename(path): set(re.findall(r'^def (test_\w+)', read(path), re.M))
               for path in glob.glob(os.path.join(ROOT, 'tests', 'test_*.py'))}
    missing = []
    for page in PAGES:
        for line in read(page).splitlines():
            current = None
            for match in re.finditer(r'(test_\w+\.py)?::(test_\w+)', line):
                current = match.group(1) or current
                if current is None or match.group(2) not in defined.get(current, ()):
                    missing.append((page, match.group(0)))
    assert not missing, missing
