import os
from pathlib import Path

import pytest

from metricner.paths import default_data_dir
from metricner.readers import write_files  # noqa: F401 -- the tests import it from here


def pytest_collection_modifyitems(items):
    "Tests that read the real corpora carry the `corpora` marker, so `-m 'not corpora'` runs without them."
    for item in items:
        if 'data_dir' in getattr(item, 'fixturenames', ()): item.add_marker(pytest.mark.corpora)


_WATCHED = ('METRICNER_', 'XDG_', 'HF_', 'TRANSFORMERS_')
_ENVIRONMENT_AT_START = {k: v for k, v in os.environ.items() if k.startswith(_WATCHED)}


@pytest.fixture(autouse=True)
def environment_left_as_found():
    "A test or fixture that leaves these variables changed would change what every later test reads: an error."
    yield
    now = {k: v for k, v in os.environ.items() if k.startswith(_WATCHED)}
    if now != _ENVIRONMENT_AT_START:
        changed = sorted(k for k in now.keys() | _ENVIRONMENT_AT_START.keys() if now.get(k) != _ENVIRONMENT_AT_START.get(k))
        pytest.fail(f'the environment was left changed: {", ".join(changed)} (use monkeypatch or MonkeyPatch.context())')


@pytest.fixture(scope='session')
def data_dir() -> Path:
    "The real corpora; their absence skips with a reason, except under CI=true where it is a failure."
    folder = default_data_dir()
    if folder.is_dir() and any(folder.iterdir()): return folder
    message = f'real corpora not found at {folder}: set METRICNER_DATA to the folder that holds them'
    if os.environ.get('CI') == 'true': pytest.fail(message)
    pytest.skip(message)
