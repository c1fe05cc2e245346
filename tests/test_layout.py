"The package's layout: one module per job, and an import graph that flows one way."
import ast
from pathlib import Path

import metricner

# Each module may import only from modules before it (the order of the README's module table).
ORDER = ['paths', 'readers', 'corpora', 'download', 'units', 'sampling', 'backbone', 'windows', 'tagger', 'events',
         'losses', 'distributed', 'trainers', 'experiments', 'grid', 'preview', 'rescore', 'report', 'study', 'site', 'tagging', 'bench', 'cli']
PACKAGE = Path(metricner.__file__).parent


def package_imports(module: Path) -> set[str]:
    "The metricner modules a module imports, at any depth of its code (relative or absolute imports)."
    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding='utf-8'))):
        if isinstance(node, ast.ImportFrom):
            name = node.module or ''
            if node.level == 1: found.add(name.split('.')[0] if name else None)
            elif name.startswith('metricner.'): found.add(name.split('.')[1])
            elif name == 'metricner': found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split('.')[1] for a in node.names if a.name.startswith('metricner.'))
    return found - {None, '_modidx'}


def test_every_module_has_a_place_in_the_order():
    modules = {p.stem for p in PACKAGE.glob('*.py') if not p.stem.startswith('_')}
    assert modules <= set(ORDER), sorted(modules - set(ORDER))


def test_the_import_graph_flows_one_way():
    order = {name: i for i, name in enumerate(ORDER)}
    for path in sorted(PACKAGE.glob('*.py')):
        if path.stem.startswith('_') or path.stem not in order: continue
        later = sorted(m for m in package_imports(path) if m in order and order[m] >= order[path.stem])
        assert not later, f'{path.stem} imports {later}, which come after it'
