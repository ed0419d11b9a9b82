"""Captioning and tags (issue 8): tokenizer, autoregressive loss, greedy decoding, word Jaccard, P@k with
relevant sets, by hand; a tiny captioner trained end to end on a real server whose captions come true."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TESTS, write_registry
from modelstream.models.captioning import ConditionalLM, SimpleTokenizer, build_vocabulary
from modelstream.models.tags import FewHot, NounWords, Tagger
from modelstream.training import losses, metrics

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
WORDS = ["a", *COLOURS, *SHAPES, "on", "the", "left", "right"]


def test_tokenizer_pads_with_stop_and_maps_unknown_words():
    tokenizer = SimpleTokenizer(tokens=["a", "dog"], max_length=4)
    assert tokenizer.tokens == ["a", "dog", "<unk>"] and (tokenizer.start, tokenizer.stop) == (3, 4)
    assert tokenizer.preprocess("A dog, barking!").tolist() == [0, 1, 2, 4]
    assert tokenizer.preprocess("a dog a dog a dog").tolist() == [0, 1, 0, 4]  # always ends in a stop
    assert tokenizer.decode([3, 0, 1, 4, 0]) == "a dog"


def test_vocabulary_from_sentences_by_count():
    assert build_vocabulary(["A red circle.", "a blue circle", "a red-square"], min_count=2) == ["a", "circle", "red"]


def test_vocabulary_file_missing_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        SimpleTokenizer(vocabulary=str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="either"):
        SimpleTokenizer()


def test_autoregressive_loss_by_hand():
    # tokens: 0, 1 (words), 2 (start), 3 (stop). Uniform logits: every counted position costs log(4).
    logits = torch.zeros(1, 3, 4)
    targets = torch.tensor([[0, 3, 3]])  # one word, the stop, padding: the padding is not counted
    assert float(losses.autoregressive_loss(logits, targets)) == pytest.approx(math.log(4))
    # a confident right first word and a uniform stop: (log(1 + 3e^-10) + log 4) / 2
    logits[0, 0, 0] = 10.0
    expected = (math.log(1 + 3 * math.exp(-10)) + math.log(4)) / 2
    assert float(losses.autoregressive_loss(logits, targets)) == pytest.approx(expected, rel=1e-5)
    assert losses.resolve("autoregressive", []) is losses.autoregressive_loss


def test_greedy_decoding_and_teacher_forcing_shapes():
    model = ConditionalLM(tokens=["a", "b"], n_condition=5, n_hidden=8, max_length=4)
    features = torch.randn(3, 5)
    targets = torch.stack([model.tokenizer.preprocess(s) for s in ("a b", "b", "a a a")])
    assert model.train_forward(features, targets).shape == (3, 4, 5)
    decoded = model(features)
    assert decoded.shape == (3, 4) and decoded.dtype == torch.long
    assert all(set(model.postprocess(row).split()) <= {"a", "b", "<unk>"} for row in decoded)
    again = ConditionalLM(tokens=["a", "b"], n_condition=5, n_hidden=8, max_length=4)
    assert torch.equal(again(features), decoded)  # seeded: every process starts from the same weights


def test_word_jaccard_of_captions():
    assert metrics.jaccard("a red circle", "A red square") == pytest.approx(2 / 4)
    assert metrics.jaccard("a red circle", "a red circle") == 1.0


def test_p_at_k_with_a_set_of_right_answers():
    assert metrics.p_at_k([5, 2, 7], frozenset({7, 9}), 2) == 0.0
    assert metrics.p_at_k([5, 2, 7], frozenset({7, 9}), 3) == 1.0


def test_relevance_groups_documents_by_field():
    from modelstream.training.validation import ValidationSet, relevance

    vset = ValidationSet({"relevant_by": "scene"}, [])
    kept = [{"scene": "x"}, {"scene": "y"}, {"scene": "x"}]
    assert relevance(vset, kept) == [frozenset({0, 2}), frozenset({1}), frozenset({0, 2})]
    assert relevance(ValidationSet({}, []), kept) is None


def test_noun_words_lexicon_few_hot_and_tagger():
    nouns = NounWords(lexicon=["circle", "left", "picture"])
    assert nouns("A picture of a red circle on the left.") == ["circle", "left", "picture"]
    with pytest.raises(ValueError, match="lexicon"):
        NounWords()
    assert FewHot(["circle", "left"]).preprocess(["left", "other"]).tolist() == [0.0, 1.0]
    tagger = Tagger(n_input=2, tokens=["circle", "left", "square"], top_k=2)
    assert tagger.postprocess(torch.tensor([0.5, -1.0, 2.0])) == ["circle", "square"]
    tagger.top_k = None
    assert tagger.postprocess(torch.tensor([0.5, -1.0, 2.0])) == ["circle", "square"]
    assert tagger.postprocess(torch.tensor([-0.5, -1.0, 2.0])) == ["square"]


# -- a tiny captioner, end to end ------------------------------------------------------------------------------

CAPTIONS = """
database: {{uri: "{uri}", name: {db}}}
api: {{listen: null}}
collection: things
validation: {{ratio: 0.2}}
models:
  captioner:
    object: "modelstream.models.captioning:ConditionalLM"
    key: x
    args: {{tokens: {words}, n_condition: 12, n_hidden: 48, max_length: 8}}
  caption_tokens:
    object: "modelstream.models.captioning:SimpleTokenizer"
    key: caption
    active: false
    args: {{tokens: {words}, max_length: 8}}
trainings:
  captions:
    kind: imputation
    model: captioner
    target: caption_tokens
    loss: autoregressive
    metrics: [jaccard]
    validation_set: v
    lr: 0.01
    batch_size: 64
    n_iterations: 200
    validation_interval: 40
"""


def thing_documents(n: int, seed: int = 0) -> list[dict]:
    """Features: one-hot colour, shape and side plus noise; the caption says the three."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        colour, shape, side = rng.integers(4), rng.integers(3), rng.integers(2)
        x = np.zeros(12, dtype=np.float32)
        x[colour], x[4 + shape], x[7 + side] = 1, 1, 1
        x += rng.normal(0, 0.1, size=12).astype(np.float32)
        docs.append({"x": x.round(4).tolist(),
                     "caption": f"a {COLOURS[colour]} {SHAPES[shape]} on the {['left', 'right'][side]}"})
    return docs


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "modelstream", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_captioner_trains_and_its_new_version_writes_true_captions(tmp_path, mongo_server, db_name, db):
    """Autoregressive training lifts caption Jaccard on held-out documents; backfill writes the new captions."""
    path = write_registry(tmp_path, CAPTIONS, uri=mongo_server.uri, db=db_name, words=WORDS)
    db.things.insert_many(thing_documents(600))
    made = cli("validation", "create", "v", "-c", str(path), "--collection", "things", "--sample", "60")
    assert made.returncode == 0, made.stderr

    trained = cli("train", "captions", "-c", str(path), "--apply", "--no-progress")
    assert trained.returncode == 0, trained.stderr
    job = db["_modelstream.trainings"].find_one({"training": "captions"})
    before, best = job["before"]["values"][0], job["best"]["values"][0]
    print(f"caption Jaccard {before:.3f} -> {best:.3f}")
    assert before < 0.5 and best > 0.9
    assert job["loss"]["values"][-1] < job["loss"]["values"][0] / 4

    filled = cli("backfill", "-c", str(path))
    assert filled.returncode == 0, filled.stderr
    held_out = {d["_id"] for d in db["_modelstream.validation.v"].find({}, {"_id": 1})}
    right = [d["_outputs"]["x"]["captioner"] == d["caption"] for d in db.things.find({"_id": {"$in": list(held_out)}})]
    assert len(right) == 60 and sum(right) >= 54


def test_scenes_example_attributes_metric_and_registry(tmp_path, monkeypatch):
    """The scenes example: its user metric by hand, its renderer deterministic, its registry valid."""
    scenes_dir = TESTS.parent / "examples" / "scenes"
    monkeypatch.syspath_prepend(str(scenes_dir))
    import scenes

    assert scenes.attributes("there is a large blue star in the centre") == {"large", "blue", "star", "middle"}
    assert scenes.attributes_named("a small blue star on the left", "a large blue star in the centre") == 0.5
    assert scenes.attributes_named(["star", "middle"], ["middle", "star", "picture"]) == 1.0
    first, again = scenes.documents(5, seed=1), scenes.documents(5, seed=1)
    assert [d["caption"] for d in first] == [d["caption"] for d in again]
    assert all(scenes.attributes(d["caption"]) == set(d["scene"].split()) for d in scenes.documents(60))
    (tmp_path / "vocab.txt").write_text("a\nred\ncircle\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELSTREAM_MONGODB_URI", "mongodb://127.0.0.1:1")
    checked = cli("check", "-c", str(scenes_dir / "registry.yaml"))
    assert checked.returncode == 0, checked.stderr
    assert "8 models" in checked.stdout


def test_scenes_demo_trains_all_three_tasks_end_to_end(tmp_path, mongo_server, db_name):
    """examples/scenes/demo.py on 300 scenes against a real server: every metric of the three trainings is
    better after training than before, search finds the right scene among held-out images, and the
    curves are PNGs."""
    import json

    env = {**os.environ, "MODELSTREAM_MONGODB_URI": mongo_server.uri, "MODELSTREAM_DB": db_name}
    demo = TESTS.parent / "examples" / "scenes" / "demo.py"
    run = subprocess.run([sys.executable, str(demo), "--documents", "300", "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {(training, metric): (before, after) for training, metric, before, after in results["table"]}
    assert len(rows) == 8 and all(after > before for before, after in rows.values()), rows
    assert rows[("text_to_image", "socket search: a right scene in the top 5")][1] >= 0.7
    assert rows[("captions", "attributes named (generated vs true caption)")][1] >= 0.5
    plots = [p for paths in results["plots"].values() for p in paths]
    assert len(plots) == 12 and all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
