"""`metricner download` against a fake mirror served from a temporary folder, and the real manifest against local corpora."""
import functools
import hashlib
import http.server
import json
import os
import random
import socket
import threading
from pathlib import Path

import pytest

import metricner
from metricner.download import CORPUS_NAMES, DownloadError, default_manifest, download, file_sha256, load_manifest

# A mirror laid out like the real one, with our paths: {corpus: (folder, source_folder, {path: (source, bytes)})}.
MIRROR = {
    'pc': ('bionlp-st-2013-pc', 'BioNLP-ST_2013_PC', {
        'train/PMID-1.txt': ('BioNLP-ST_2013_PC_training_data/PMID-1.txt', b'Title one\nAbstract one\n'),
        'train/PMID-1.a1': ('BioNLP-ST_2013_PC_training_data/PMID-1.a1', b'T1\tSimple_chemical 0 5\tTitle\n'),
        'devel/PMID-2.txt': ('BioNLP-ST_2013_PC_development_data/PMID-2.txt', b'Title two\nAbstract two\n')}),
    'chemdner': ('chemdner', 'chemdner_corpus', {
        'training.abstracts.txt': ('training.abstracts.txt', b'1\tA title\tAn abstract\n'),
        'training.annotations.txt': ('training.annotations.txt', b'1\tT\t2\t7\ttitle\tTRIVIAL\n')}),
    'drugprot': ('drugprot', 'drugprot-gs-training-development', {
        'training/drugprot_training_abstracs.tsv': ('training/drugprot_training_abstracs.tsv', b'1\tT\tA\n')}),
}


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    "Write the fake mirror and its manifest, serve the mirror on 127.0.0.1; yield (base_url, manifest, mirror_dir)."
    monkeypatch.setenv('NO_PROXY', '127.0.0.1')  # a proxy configured in the environment must not intercept local requests
    root, corpora = tmp_path/'mirror', {}
    for name, (folder, source_folder, files) in MIRROR.items():
        rows = []
        for path, (source, data) in files.items():
            target = root/source_folder/source
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            rows.append([path, source, len(data), hashlib.sha256(data).hexdigest()])
        corpora[name] = dict(folder=folder, source_folder=source_folder, files=rows)
    manifest = tmp_path/'corpora.json'
    manifest.write_text(json.dumps(dict(mirror='http://mirror.invalid/', corpora=corpora)))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}/', manifest, root
    server.shutdown()
    server.server_close()
    thread.join()


def files_under(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob('*') if p.is_file()}


def test_download_writes_the_expected_layout(mirror, tmp_path):
    url, manifest, _ = mirror
    report = download(['pc', 'chemdner', 'drugprot'], tmp_path/'data', base_url=url, manifest=manifest, progress=False)
    assert (report['downloaded'], report['present'], report['failed']) == (6, 0, 0)
    assert report['corpora']['pc'] == dict(downloaded=3, present=0, failed=0)
    expected = {f'{folder}/{path}': data for folder, _, files in MIRROR.values() for path, (_, data) in files.items()}
    assert files_under(tmp_path/'data') == expected  # no temporary files left behind either


def test_second_run_skips_everything(mirror, tmp_path):
    url, manifest, _ = mirror
    download(['pc', 'chemdner'], tmp_path/'data', base_url=url, manifest=manifest, progress=False)
    report = download(['pc', 'chemdner'], tmp_path/'data', base_url=url, manifest=manifest, progress=False)
    assert (report['downloaded'], report['present'], report['failed']) == (0, 5, 0)


def test_default_destination_is_the_data_directory(mirror, tmp_path, monkeypatch):
    url, manifest, _ = mirror
    monkeypatch.setenv('METRICNER_DATA', str(tmp_path/'elsewhere'))
    report = download('drugprot', base_url=url, manifest=manifest, progress=False)
    assert report['dir'] == str(tmp_path/'elsewhere')
    assert (tmp_path/'elsewhere'/'drugprot'/'training'/'drugprot_training_abstracs.tsv').is_file()


def test_damaged_local_file_is_fetched_again(mirror, tmp_path):
    url, manifest, _ = mirror
    download('chemdner', tmp_path/'data', base_url=url, manifest=manifest, progress=False)
    (tmp_path/'data'/'chemdner'/'training.abstracts.txt').write_bytes(b'truncated')
    report = download('chemdner', tmp_path/'data', base_url=url, manifest=manifest, progress=False)
    assert (report['downloaded'], report['present']) == (1, 1)
    assert (tmp_path/'data'/'chemdner'/'training.abstracts.txt').read_bytes() == MIRROR['chemdner'][2]['training.abstracts.txt'][1]


def test_corrupt_file_on_server_is_a_checksum_error(mirror, tmp_path):
    url, manifest, root = mirror
    corrupt = b'Title one\nAbstract tampered\n'
    (root/'BioNLP-ST_2013_PC'/'BioNLP-ST_2013_PC_training_data'/'PMID-1.txt').write_bytes(corrupt)
    with pytest.raises(DownloadError) as caught:
        download('pc', tmp_path/'data', base_url=url, manifest=manifest, progress=False)
    message = str(caught.value)
    assert 'bionlp-st-2013-pc/train/PMID-1.txt' in message
    assert hashlib.sha256(MIRROR['pc'][2]['train/PMID-1.txt'][1]).hexdigest() in message  # expected
    assert hashlib.sha256(corrupt).hexdigest() in message  # got
    assert (caught.value.report['downloaded'], caught.value.report['failed']) == (2, 1)  # the other files still came
    assert not (tmp_path/'data'/'bionlp-st-2013-pc'/'train'/'PMID-1.txt').exists()
    assert sorted(files_under(tmp_path/'data')) == ['bionlp-st-2013-pc/devel/PMID-2.txt', 'bionlp-st-2013-pc/train/PMID-1.a1']


def test_missing_file_on_server_is_reported(mirror, tmp_path):
    url, manifest, root = mirror
    (root/'chemdner_corpus'/'training.annotations.txt').unlink()
    with pytest.raises(DownloadError, match=r'HTTP 404 .*training\.annotations\.txt'):
        download('chemdner', tmp_path/'data', base_url=url, manifest=manifest, progress=False)


def test_unreachable_server_is_one_clear_sentence(mirror, tmp_path):
    _, manifest, _ = mirror
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as caught:
        download('chemdner', tmp_path/'data', base_url=f'http://127.0.0.1:{port}/', manifest=manifest, progress=False)
    message = str(caught.value)
    assert message.startswith(f'Could not reach 127.0.0.1:{port} to download chemdner (')
    assert str(tmp_path/'data') in message and 'METRICNER_DATA' in message
    assert '\n' not in message and message.count('. ') == 0 and message.endswith('.')
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # nothing chained for a traceback


def test_unknown_corpus_lists_valid_names(mirror, tmp_path):
    _, manifest, _ = mirror
    with pytest.raises(ValueError, match='valid names are pc, cg, id, all, chemdner, bc5cdr, drugprot'):
        download(['pc', 'genia'], tmp_path/'data', manifest=manifest, progress=False)
    assert not (tmp_path/'data').exists()  # checked before anything is fetched


def test_real_manifest_lists_all_six_corpora():
    manifest = load_manifest()
    assert default_manifest() == Path(metricner.__file__).parent/'resources'/'corpora.json'  # package data, not the checkout's data/
    assert set(manifest['corpora']) == set(CORPUS_NAMES)
    for name, corpus in manifest['corpora'].items():
        assert corpus['files'] and corpus['licence'] and corpus['origin'], name
        for path, source, size, sha256 in corpus['files']:
            assert not path.startswith('/') and '..' not in path.split('/') and size >= 0 and len(sha256) == 64, (name, path)


def local_corpora() -> Path | None:
    for candidate in (os.environ.get('METRICNER_DATA'), '/work/shared/corpora',
                      Path(__file__).resolve().parent.parent.parent/'shared'/'corpora'):
        if candidate and (Path(candidate)/'chemdner').is_dir(): return Path(candidate)
    return None


@pytest.mark.parametrize('name', CORPUS_NAMES)
def test_real_manifest_matches_local_corpora(name):
    root = local_corpora()
    if root is None: pytest.skip('no local copy of the corpora ($METRICNER_DATA or ../shared/corpora) to check against')
    corpus = load_manifest()['corpora'][name]
    rows = random.Random(0).sample(corpus['files'], min(20, len(corpus['files'])))
    for path, _, size, sha256 in rows:
        local = root/corpus['folder']/path
        assert local.stat().st_size == size and file_sha256(local) == sha256, local
