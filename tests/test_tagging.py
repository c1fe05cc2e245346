"Tagging new text with a run's model, the command line, bad inputs, model folders, and export to transformers / adapters."
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metricner.backbone import build_tiny_backbone
from metricner.cli import main
from metricner.corpora import load_corpus
from metricner.experiments import ExperimentConfig, StageCache, _digest, run_experiment
from metricner.readers import Document, read_pubtator
from metricner.tagger import ModelFolderError, Tagger, load_tagger
from metricner.tagging import (export_model, pipeline_entities, read_input, tag_documents, word_differences,
                               write_pubtator)
from metricner.trainers import document_counts, score
from metricner.units import bio_tags, tag_document, tokenize

BIN = Path(sys.executable).parent
LABELS = ['O', 'B-Chemical', 'I-Chemical', 'B-Gene', 'I-Gene']
TEXTS = ['Phosphorylation of NADPH by the kinase PKA in mice.',
         'Les cellules exprimées — naïve ß-catenin (5 µM) ≥ 10 °C\r\nwere treated with the drug.\r\n',
         'Aspirin and the gene\nThe drug binding to the receptor was increased by 4-hydroxy-tamoxifen (4-OHT).',
         '日本語のテキスト and Ünïcödé wörds: α-tocopherol, β2-agonist, Ca²⁺ ions.']


@pytest.fixture(scope='module')
def tiny(tmp_path_factory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp('tiny') / 'bert', max_position=512)


@pytest.fixture(scope='module')
def full_model(tiny, tmp_path_factory) -> Path:
    "A saved, fully fine-tuned tagger with a random head: it finds entities everywhere."
    return Tagger.build(tiny, LABELS, mode='full', seed=3).save(tmp_path_factory.mktemp('model') / 'model')


@pytest.fixture
def isolated(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv('METRICNER_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('METRICNER_DATA', str(data_dir))
    return tmp_path


def test_offsets_cover_the_text_exactly(full_model):
    tagger = load_tagger(full_model)
    found = tagger.tag(TEXTS)
    assert sum(map(len, found)) > 10  # a random head: many entities, of both types
    for text, entities in zip(TEXTS, found):
        assert all(text[e.start:e.end] == e.text and 0 < e.score <= 1 for e in entities)
    assert tagger.tag(TEXTS[1]) == found[1]  # one string: one list


def test_pubtator_title_abstract_offsets_survive_a_round_trip(full_model, tmp_path):
    (tmp_path / 'in.pubtator').write_text('1|t|Aspirin and the gene\n1|a|The drug binding was increased.\n\n'
                                          '2|t|Phosphorylation of NADPH\n2|a|by the kinase PKA in mice.\n', encoding='utf-8')
    docs = read_input(tmp_path / 'in.pubtator')
    assert main(['tag', '--model', str(full_model), str(tmp_path / 'in.pubtator'), '--out', str(tmp_path / 'out.pubtator'), '--quiet']) == 0
    back = read_pubtator(tmp_path / 'out.pubtator')  # the reader checks each mention's text against the offsets
    expected = tag_documents(load_tagger(full_model), docs)
    assert [sorted((m.start, m.end, m.type) for m in d.mentions) for d in back] == \
        [sorted((e.start, e.end, e.type) for e in f) for f in expected]
    assert sum(len(d.mentions) for d in back) > 0


def test_long_documents_are_windowed_not_truncated(tiny, tmp_path):
    tagger = Tagger.build(tiny, LABELS, mode='full', seed=1, max_length=32)
    text = ' '.join(['the cells of mice were treated with the drug and the kinase level was increased'] * 20)
    found = tagger.tag(text)
    assert max(e.end for e in found) > len(text) * 0.9  # entities up to the end, far beyond one 32-token window


@pytest.mark.parametrize('content,problem', [
    (b'', 'empty input'),
    (b'   \n\n', 'empty input'),
    (b'text\n\x89PNG\r\n\x1a\n\x00\x00\x00', ':4: a binary file'),
    ('first line\nsecond caf\u00e9'.encode('latin-1'), ':2: bytes that are not UTF-8'),
])
def test_bad_input_is_one_clear_error(full_model, tmp_path, capsys, content, problem):
    (tmp_path / 'in.txt').write_bytes(content)
    assert main(['tag', '--model', str(full_model), str(tmp_path / 'in.txt')]) == 2
    err = capsys.readouterr().err
    assert f'{tmp_path / "in.txt"}' in err and problem in err and err.count('\n') == 1


def test_malformed_pubtator_and_unknown_formats(full_model, tmp_path, capsys):
    (tmp_path / 'in.pubtator').write_text('5|t|Aspirin\n5|a|is a drug.\n5\t0\t7\tAspirin\n', encoding='utf-8')
    assert main(['tag', '--model', str(full_model), str(tmp_path / 'in.pubtator')]) == 2
    assert f'{tmp_path / "in.pubtator"}:3: expected a mention line' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: an unknown format is refused with the choices
        main(['tag', '--model', str(full_model), str(tmp_path / 'in.pubtator'), '--format', 'xml'])
    assert "invalid choice: 'xml'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown input format 'pdf'"):
        read_input(tmp_path / 'in.pubtator', 'pdf')


@pytest.mark.parametrize('fmt', ['jsonl', 'conll', 'brat'])
def test_every_output_format(full_model, tmp_path, fmt):
    (tmp_path / 'doc.txt').write_text(TEXTS[2], encoding='utf-8')
    out = tmp_path / ('brat' if fmt == 'brat' else f'out.{fmt}')
    assert main(['tag', '--model', str(full_model), str(tmp_path / 'doc.txt'), '--format', fmt, '--out', str(out), '--quiet']) == 0
    expected = [(e.start, e.end, e.type) for e in load_tagger(full_model).tag(TEXTS[2])]
    if fmt == 'jsonl':
        [row] = [json.loads(l) for l in out.read_text(encoding='utf-8').splitlines()]
        assert [(e['start'], e['end'], e['type']) for e in row['entities']] == expected and row['text'] == TEXTS[2]
    elif fmt == 'conll':
        rows = [l.split('\t') for l in out.read_text(encoding='utf-8').splitlines() if l and not l.startswith('-DOCSTART-')]
        spans = tokenize(TEXTS[2])
        assert [w for w, _ in rows] == [TEXTS[2][s:e] for s, e in spans]
        assert sum(t.startswith('B-') for _, t in rows) == len(expected)
    else:
        ann = (out / 'doc.ann').read_text(encoding='utf-8').splitlines()
        assert len([l for l in ann if l.startswith('T')]) == len(expected) and (out / 'doc.txt').read_text() == TEXTS[2]


@pytest.mark.slow
def test_command_works_in_a_pipe(full_model):
    done = subprocess.run([str(BIN / 'metricner'), 'tag', '--model', str(full_model), '-', '--format', 'jsonl'],
                          input=TEXTS[0].encode(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    [row] = [json.loads(l) for l in done.stdout.decode().splitlines()]
    assert row['id'] == 'stdin' and all(TEXTS[0][e['start']:e['end']] == e['text'] for e in row['entities'])
    assert 'metricner tag: 1 documents' in done.stderr.decode()


def test_model_folder_problems_name_the_folder(tiny, full_model, tmp_path):
    copy = Path(shutil.copytree(full_model, tmp_path / 'copy'))
    (copy / 'tagger.safetensors').unlink()
    with pytest.raises(ModelFolderError, match=f'model folder {copy}: tagger.safetensors is missing'):
        load_tagger(copy)
    (copy / 'tagger.safetensors').write_bytes(b'not safetensors')
    with pytest.raises(ModelFolderError, match='is not a readable safetensors file'):
        load_tagger(copy)
    Tagger.build(tiny, LABELS[:3], mode='full').save(tmp_path / 'three')
    shutil.copy(tmp_path / 'three' / 'tagger.safetensors', copy / 'tagger.safetensors')
    with pytest.raises(ModelFolderError, match=r'weight head\.\w+ has shape \(3'):
        load_tagger(copy)
    moved = Path(shutil.copytree(tiny, tmp_path / 'moved-backbone'))
    adapter = Tagger.build(moved, LABELS, mode='adapter').save(tmp_path / 'adapter')
    shutil.rmtree(moved)
    with pytest.raises(ValueError, match=f'model folder {tmp_path / "adapter"}: its backbone cannot be loaded'):
        load_tagger(adapter)
    with pytest.raises(ModelFolderError, match='is not a saved tagger'):  # a backbone folder, not a tagger
        load_tagger(tiny)


def test_export_full_model_agrees_with_the_transformers_pipeline(full_model, tmp_path):
    out = export_model(full_model, tmp_path / 'exported')
    files = {p.name for p in out.iterdir()}
    assert {'config.json', 'model.safetensors', 'tokenizer.json'} <= files
    config = json.loads((out / 'config.json').read_text())
    assert config['id2label'] == {str(i): l for i, l in enumerate(LABELS)} and config['label2id']['B-Gene'] == 3
    tagger = load_tagger(full_model)
    texts = [t for t in TEXTS if not word_differences(t, tagger.tokenizer)]
    assert len(texts) >= 2
    ours = [[(e.start, e.end, e.type) for e in f] for f in tagger.tag(texts)]
    assert pipeline_entities(out, texts) == ours and sum(map(len, ours)) > 5
    with pytest.raises(ValueError, match='exists and is not empty'):
        export_model(full_model, out)


def test_export_adapter_model_loads_with_the_adapters_library(tiny, tmp_path):
    from adapters import AutoAdapterModel
    tagger = Tagger.build(tiny, LABELS, mode='adapter', seed=2)
    with torch.no_grad():  # trained-looking adapter weights, so that the check covers them
        for p in tagger.parameters():
            if p.requires_grad: p.add_(0.05 * torch.randn_like(p))
    out = export_model(tagger.save(tmp_path / 'model'), tmp_path / 'exported')
    assert {'adapter_config.json', 'head_config.json'} <= {p.name for p in out.iterdir()}
    model = AutoAdapterModel.from_pretrained(str(tiny))
    model.load_adapter(str(out), set_active=True)
    inputs = tagger.tokenizer(['the kinase binding of the drug in mice'], return_tensors='pt')
    tagger.eval(); model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, tagger(inputs['input_ids'], inputs['attention_mask'])[0], atol=1e-5)


def test_word_differences_are_where_stated(full_model):
    tokenizer = load_tagger(full_model).tokenizer
    assert word_differences('Aspirin (5 mg/kg) inhibits COX-2; 4-OHT binds ER-alpha.', tokenizer) == []
    assert word_differences('a_b', tokenizer) and word_differences('10°C', tokenizer) and word_differences('x\u00ady', tokenizer)


def smoke_run(tmp_path, **overrides):
    "A smoke run trained long enough to find entities (F1 about 0.3 on BC5CDR)."
    values = dict(target='bc5cdr', setting='oracle', profile='smoke', out_dir=str(tmp_path / 'run'),
                  target_train={'max_epochs': 5, 'min_epochs': 5}, max_documents={'train': 24, 'test': 20})
    return run_experiment(ExperimentConfig(**{**values, **overrides}), StageCache(tmp_path / 'stages'))


@pytest.mark.slow
def test_tagging_scores_what_evaluation_recorded(isolated):
    record = smoke_run(isolated)
    run = isolated / 'run'
    saved = json.loads((run / 'model' / 'config.json').read_text())
    assert record['files']['model'] == 'model' and saved['run']['config_digest'] == _digest(record['config'])
    assert saved['config']['labels'] == ['O', 'B-Chemical', 'I-Chemical'] and saved['version'] == record['version']
    corpus = load_corpus('bc5cdr')
    docs = corpus['test'][:20]
    buffer = io.StringIO()
    write_pubtator(docs, [[] for _ in docs], buffer)  # the texts alone
    (isolated / 'test.pubtator').write_text(buffer.getvalue(), encoding='utf-8')
    assert main(['tag', '--model', str(run / 'model'), str(isolated / 'test.pubtator'), '--out', str(isolated / 'tagged.pubtator'), '--quiet']) == 0
    tagged = read_pubtator(isolated / 'tagged.pubtator')
    # Evaluation splits words at every gold mention boundary; these documents have none inside a word, so the words
    # are the same on both paths (see nbs/09_tagging.ipynb on where they can differ).
    gold = [tag_document(d, corpus.types, source_like=corpus.source_like)[0] for d in docs]
    assert all(u.spans == tokenize(d.text) for u, d in zip(gold, docs))
    predicted = [bio_tags(u.spans, t.mentions) for u, t in zip(gold, tagged)]
    assert score([u.tags for u in gold], predicted)['f1'] == record['f1'] > 0
    recorded = json.loads((run / 'per_document.json').read_text())['tp_fp_fn']
    assert document_counts([u.tags for u in gold], predicted) == [tuple(c) for c in recorded]


@pytest.mark.slow
def test_no_save_model_keeps_no_model(isolated):
    (isolated / 'run' / 'model').mkdir(parents=True)  # an older run's model must not stay beside the new record
    record = smoke_run(isolated, save_model=False, max_documents={'train': 4, 'test': 2}, target_train={'max_epochs': 1})
    assert 'model' not in record['files'] and not (isolated / 'run' / 'model').exists()
