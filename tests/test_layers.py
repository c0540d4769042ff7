"""The modules' layers: process < config_keys < run_folder < command_line, pictures on process alone, no import
cycle among the project's modules, and each module's docstring saying its one concern in its first line."""
import ast
import os

from conftest import ROOT

MODULES = sorted(name[:-len('.py')] for name in os.listdir(ROOT) if name.endswith('.py'))
LAYERS = ('process', 'config_keys', 'run_folder', 'command_line')  # each imports only those before it


def parsed(module):
    with open(os.path.join(ROOT, module + '.py'), encoding='utf-8') as f:
        return ast.parse(f.read())


def project_imports(module):
    """The project modules `module` imports, at its top or inside a function."""
    imported = set()
    for node in ast.walk(parsed(module)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module)
    return imported & set(MODULES)


def test_the_modules_are_layered_without_a_cycle():
    assert 'utils' not in MODULES
    assert {'config', 'process', 'config_keys', 'run_folder', 'command_line', 'pictures', 'datasets', 'deploy', 'fid',
            'two_stage', 'hparams', 'saved_model', 'vae', 'vae_inference'} <= set(MODULES)
    imports = {module: project_imports(module) for module in MODULES}
    for rank, module in enumerate(LAYERS):
        assert imports[module] <= set(LAYERS[:rank]), (module, imports[module])
    assert imports['pictures'] <= {'process'}, imports['pictures']
    left = dict(imports)  # take away the modules that import none of those left, until none is left
    while left:
        leaves = {module for module, imported in left.items() if not imported & set(left)}
        assert leaves, f'an import cycle among {sorted(left)}'
        left = {module: imported for module, imported in left.items() if module not in leaves}


def test_each_module_says_its_one_concern_in_its_first_line():
    for module in MODULES:
        docstring = ast.get_docstring(parsed(module))
        assert docstring and docstring.splitlines()[0].strip(), module
