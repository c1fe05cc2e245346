import os
from pathlib import Path

import pytest

from metricner.paths import default_data_dir


@pytest.fixture(scope='session')
def data_dir() -> Path:
    "The real corpora; their absence skips with a reason, except under CI=true where it is a failure."
    folder = default_data_dir()
    if folder.is_dir() and any(folder.iterdir()): return folder
    message = f'real corpora not found at {folder}: set METRICNER_DATA to the folder that holds them'
    if os.environ.get('CI') == 'true': pytest.fail(message)
    pytest.skip(message)


def write_files(folder: Path, files: dict[str, str]) -> Path:
    "Write a small corpus: {relative path: content}."
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content, encoding='utf-8')
    return folder
