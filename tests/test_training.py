"""Training and validation (issue 8): metrics, losses, measures, folds by hand; specs; end to end on a real server.

The end-to-end task is examples/training/synthetic.py: two embedding spaces related by a fixed random
rotation plus noise; a linear projection trained with the ranking loss must lift P@k clearly.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TESTS, write_registry
from modelstream import registry
from modelstream.errors import ConfigErrors
from modelstream.training import folds, losses, measures, metrics

EXAMPLE = TESTS.parent / "examples" / "training"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(TESTS)])}
    return subprocess.run([sys.executable, "-m", "modelstream", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=cwd)


# -- metrics, measures, losses, folds: against hand-computed values ------------------------------------------


def test_p_at_k_by_hand():
    ranked = ["c", "a", "b", "d"]
    assert metrics.p_at_k(ranked, "c", 1) == 1.0
    assert metrics.p_at_k(ranked, "a", 1) == 0.0
    assert metrics.p_at_k(ranked, "a", 2) == 1.0
    assert metrics.p_at_k(ranked, "d", 3) == 0.0
    p_at_2 = metrics.resolve("p_at_2", [])
    # three queries: found at rank 1, rank 2, rank 4 -> P@2 = 2/3
    assert metrics.mean([p_at_2(["q0", "x"], "q0"), p_at_2(["x", "q1"], "q1"), p_at_2(["x", "y", "z", "q2"], "q2")]) \
        == pytest.approx(2 / 3)


def test_jaccard_by_hand():
    assert metrics.jaccard(["dog", "cat"], ["cat", "sofa", "dog"]) == pytest.approx(2 / 3)
    assert metrics.jaccard(["a"], ["b"]) == 0.0
    assert metrics.jaccard([], []) == 1.0
    assert metrics.jaccard(["a", "a", "b"], ["b"]) == 0.5
    assert metrics.resolve("jaccard", []) is metrics.jaccard


def test_retrieval_scores_by_hand():
    from modelstream.training.validation import retrieval_scores

    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = torch.tensor([[1.0, 0.1], [1.0, 0.0], [1.0, 1.0]])  # q0 -> d0 first; q1 -> d0 first, d1 last; q2 -> d2
    fns = {"p_at_1": metrics.resolve("p_at_1", []), "p_at_2": metrics.resolve("p_at_2", [])}
    scores = retrieval_scores(docs, queries, "cosine", fns)
    assert scores == {"p_at_1": pytest.approx(2 / 3), "p_at_2": pytest.approx(2 / 3)}


def test_user_metric_and_loss_by_import_path(tmp_path):
    (tmp_path / "mine.py").write_text("def half(x, y):\n    return 0.5\n\n"
                                      "class Sq:\n    def __call__(self, x, y):\n        return ((x - y) ** 2).mean()\n")
    assert metrics.resolve("mine:half", [tmp_path])(1, 2) == 0.5
    loss = losses.resolve("mine:Sq", [tmp_path])
    assert float(loss(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))) == pytest.approx(2.0)


def test_measures_by_hand():
    x = torch.tensor([[3.0, 4.0]])
    y = torch.tensor([[3.0, 4.0], [4.0, -3.0], [0.0, 1.0]])
    assert measures.cosine(x, y).tolist()[0] == pytest.approx([1.0, 0.0, 0.8])
    assert measures.dot(x, y).tolist()[0] == pytest.approx([25.0, 0.0, 4.0])
    assert measures.l2(x, y).tolist()[0] == pytest.approx([0.0, -math.sqrt(50), -math.sqrt(18)], abs=1e-4)


def test_ranking_loss_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # cosine similarities: [[1, 0], [0, 1]]; -log softmax diagonal = log(1 + e^-1) per row
    assert float(losses.ranking_loss(x, y)) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-5)


def test_ranking_loss_with_another_measure_and_a_user_measure(tmp_path):
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # dot similarities [[2, 0], [0, 2]]: -log softmax of the diagonal = log(1 + e^-2) per row
    loss = losses.resolve("ranking", [], measure=measures.resolve("dot"))
    assert float(loss(x, y)) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-5)
    (tmp_path / "mymeasure.py").write_text("def neg_l1(x, y):\n    return -(x[:, None, :] - y[None, :, :]).abs().sum(-1)\n")
    neg_l1 = measures.resolve("mymeasure:neg_l1", [tmp_path])
    assert neg_l1(x, y).tolist() == [[-1.0, -2.0], [-4.0, -1.0]]


def test_bce_with_pos_weight_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    target = torch.tensor([[1.0, 0.0]])
    loss = losses.resolve("bce", [], pos_weight=[3.0, 1.0])
    # column 0: positive, weight 3: 3 * log(2); column 1: negative: log(1 + e^2); mean of the two
    expected = (3 * math.log(2) + math.log(1 + math.exp(2))) / 2
    assert float(loss(logits, target)) == pytest.approx(expected, rel=1e-5)
    assert losses.auto_pos_weight([[1, 0], [1, 1], [0, 0], [0, 0]]) == pytest.approx([1.0, 3.0])


def test_folds_are_a_pure_function_of_the_id():
    from bson import ObjectId

    ids = [ObjectId() for _ in range(4000)] + list(range(1000)) + [f"key{i}" for i in range(1000)]
    first = [folds.fold_of(i, 0.1) for i in ids]
    assert first == [folds.fold_of(i, 0.1) for i in ids]
    share = first.count(folds.VALID) / len(ids)
    assert 0.08 < share < 0.12
    # a larger ratio keeps every valid document valid
    assert all(folds.fold_of(i, 0.2) == folds.VALID for i, f in zip(ids, first) if f == folds.VALID)


# -- the registry: trainings, validation, weights -----------------------------------------------------------

BASE = """
database: {{uri: "mongodb://127.0.0.1:1", name: x}}
api: {{listen: null}}
collection: pairs
models:
  projection: {{object: "synthetic:Projection", args: {{dim: 4}}, key: x{weights}}}
  query:      {{object: "synthetic:identity", key: q, active: false}}
trainings:
{trainings}
"""

GOOD = """  align:
    kind: semantic_index
    models: [projection, query]
    use_grads: {projection: true}
    validation_set: v"""


def test_trainings_parse(tmp_path):
    plan = registry.load(write_registry(tmp_path, BASE, weights="", trainings=GOOD))
    spec = plan.registry.trainings["align"]
    assert spec.models == ("projection", "query") and spec.trained == ("projection",)
    assert spec.loss == "ranking" and spec.metrics == ("p_at_10",) and spec.measure == "cosine"
    assert plan.registry.validation.ratio == 0.1
    own = registry.load(write_registry(tmp_path, BASE, weights="", trainings=GOOD + "\n    measure: mine:sim"))
    assert own.registry.trainings["align"].measure == "mine:sim"  # a user measure, imported when it trains


def test_bad_training_spec_names_file_and_line(tmp_path):
    bad = """  align:
    kind: semantic_index
    models: [projection, qurey]
    use_grads: {projection: yes please}
    loss: hinge
    metrics: [p_at_zero]
    lr: -1
    validation_set: v
  tags:
    kind: imputation
    model: projection"""
    path = write_registry(tmp_path, BASE, weights="", trainings=bad)
    with pytest.raises(ConfigErrors) as err:
        registry.load(path)
    text = str(err.value)
    for line, needle in ((11, "unknown model 'qurey'"), (12, "use_grads.projection must be true or false"),
                         (13, "loss is 'hinge'"), (14, "unknown metric 'p_at_zero'"), (15, "lr must be positive"),
                         (18, "has no `target`")):
        assert f"{path}:{line}: " in text and needle in text, (line, needle, text)
    result = cli("train", "align", "-c", str(path))
    assert result.returncode == 2 and f"{path}:11:" in result.stderr


def test_weights_change_the_version(tmp_path):
    sys.path.insert(0, str(EXAMPLE))
    trainings = GOOD
    plain = registry.load(write_registry(tmp_path, BASE, weights="", trainings=trainings))
    from synthetic import Projection

    torch.save(Projection(4, seed=1).state_dict(), tmp_path / "w1.pt")
    torch.save(Projection(4, seed=2).state_dict(), tmp_path / "w2.pt")
    one = registry.load(write_registry(tmp_path, BASE, weights=", weights: w1.pt", trainings=trainings))
    two = registry.load(write_registry(tmp_path, BASE, weights=", weights: w2.pt", trainings=trainings))
    versions = {plain.versions["projection"], one.versions["projection"], two.versions["projection"]}
    assert len(versions) == 3
    assert one.versions["query"] == plain.versions["query"]
    loaded = registry.load_models(one.registry, one.versions, ["projection"])["projection"].obj
    assert torch.equal(loaded.linear.weight, Projection(4, seed=1).linear.weight)
    path = write_registry(tmp_path, BASE, weights=", weights: missing.pt", trainings=trainings)
    with pytest.raises(ConfigErrors, match=rf"{path}:6: models.projection.weights: cannot read"):
        registry.load(path)


# -- end to end on a real server ---------------------------------------------------------------------------

E2E = """
database: {{uri: "{uri}", name: {db}}}
api: {{listen: null}}
collection: pairs
validation: {{ratio: 0.2}}
models:
  projection: {{object: "synthetic:Projection", args: {{dim: 16, seed: 0}}, key: x}}
  query:      {{object: "synthetic:identity", key: q, active: false}}
  tagger:     {{object: "synthetic:Tagger", args: {{dim: 16}}, key: x}}
  few_hot:    {{object: "synthetic:FewHot", key: tags, active: false}}
  letters:    {{object: "toymodels:letters", key: name, active: false}}
indexes:
  pairs: {{models: [projection, query], measure: cosine}}
trainings:
  align:
    kind: semantic_index
    models: [projection, query]
    use_grads: {{projection: true}}
    loss: ranking
    metrics: [p_at_1, p_at_10]
    validation_set: v
    lr: 0.02
    batch_size: 64
    n_iterations: 150
    validation_interval: 25
  tags:
    kind: imputation
    model: tagger
    target: few_hot
    pos_weight: auto
    metrics: [jaccard]
    validation_set: vt
    lr: 0.02
    n_iterations: 150
    validation_interval: 25
  not_torch:
    kind: semantic_index
    models: [letters, query]
    use_grads: {{letters: true}}
    validation_set: v
"""


def _p(result, metric):
    return float(next(line.split("=")[1] for line in result.stdout.splitlines() if f"{metric} =" in line))


def test_validation_validate_train_apply_end_to_end(tmp_path, mongo_server, db_name, db):
    sys.path.insert(0, str(EXAMPLE))
    from synthetic import documents

    path = write_registry(tmp_path, E2E, uri=mongo_server.uri, db=db_name)
    docs = documents(n=1000, dim=16, noise=0.3, seed=3)
    db.pairs.insert_many(docs)
    before_docs = {d["_id"]: d for d in db.pairs.find()}

    made = cli("validation", "create", "v", "-c", str(path), "--collection", "pairs", "--sample", "150",
               "--split", "x:q")
    assert made.returncode == 0, made.stderr
    assert "150 documents" in made.stdout
    frozen = db["_modelstream.validation.v"]
    assert frozen.count_documents({}) == 150
    assert set(frozen.find_one()["fields"]) == {"x", "q"}
    assert all(folds.fold_of(r["_id"], 0.2) == folds.VALID for r in frozen.find({}, {"_id": 1}))
    again = cli("validation", "create", "v", "-c", str(path), "--collection", "pairs", "--sample", "150")
    assert again.returncode != 0 and "--replace" in again.stderr

    before = cli("validate", "pairs", "--set", "v", "-c", str(path), "--metric", "p_at_1", "--metric", "p_at_10")
    assert before.returncode == 0, before.stderr

    not_torch = cli("train", "not_torch", "-c", str(path))
    assert not_torch.returncode == 2 and f"{path}:" in not_torch.stderr and "not a torch.nn.Module" in \
        not_torch.stderr
    assert db["_modelstream.trainings"].count_documents({}) == 0  # failed before it started

    trained = cli("train", "align", "-c", str(path), "--apply")
    assert trained.returncode == 0, trained.stderr
    assert "wrote `weights:`" in trained.stdout
    after = cli("validate", "pairs", "--set", "v", "-c", str(path), "--metric", "p_at_1", "--metric", "p_at_10")
    assert after.returncode == 0, after.stderr
    p1_before, p1_after = _p(before, "p_at_1"), _p(after, "p_at_1")
    p10_before, p10_after = _p(before, "p_at_10"), _p(after, "p_at_10")
    print(f"P@1 {p1_before:.3f} -> {p1_after:.3f}; P@10 {p10_before:.3f} -> {p10_after:.3f}")
    assert p1_after > p1_before + 0.4 and p10_after > p10_before + 0.4

    job = db["_modelstream.trainings"].find_one({"training": "align"})
    assert job["status"] == "done" and job["best"]["iteration"] > 0
    assert len(job["loss"]["values"]) == job["iterations"]
    assert job["loss"]["values"][-1] < job["loss"]["values"][0]
    assert job["weights"] and all(len(w["norm"]) == len(job["validations"]) for w in job["weights"])
    assert job["before"]["values"][0] == pytest.approx(p1_before, abs=1e-3)  # the same figure as `validate`
    weights = Path(job["weight_files"][0]["path"])
    assert weights.parent == tmp_path / ".modelstream" / "weights" and weights.name.startswith("projection-")
    plan = registry.load(path)
    assert plan.registry.models["projection"].weights == str(weights)
    assert plan.versions["projection"] != registry.load(path).versions["query"]
    for png in job["plots"]:
        assert Path(png).read_bytes()[:8] == PNG_SIGNATURE
    assert {Path(p).name for p in job["plots"]} == {"loss.png", "metric_p_at_1.png", "metric_p_at_10.png",
                                                    "weights.png"}
    assert all(Path(p).parent == tmp_path / ".modelstream" / "trainings" / "align" for p in job["plots"])
    plotted = cli("train", "align", "-c", str(path), "--plot")
    assert plotted.returncode == 0 and sorted(plotted.stdout.split()) == sorted(job["plots"])
    stored = list(db["_modelstream.metrics"].find({"kind": "index"}))
    assert len(stored) == 2 and stored[1]["metrics"][0] == {"metric": "p_at_1", "value": pytest.approx(p1_after)}

    made = cli("validation", "create", "vt", "-c", str(path), "--collection", "pairs", "--sample", "150",
               "--split", "x:tags")
    assert made.returncode == 0, made.stderr
    tags = cli("train", "tags", "-c", str(path), "--no-progress")
    assert tags.returncode == 0, tags.stderr
    job = db["_modelstream.trainings"].find_one({"training": "tags"})
    jaccard_before, jaccard_best = job["before"]["values"][0], job["best"]["values"][0]
    print(f"Jaccard {jaccard_before:.3f} -> {jaccard_best:.3f}")
    assert jaccard_best > jaccard_before + 0.2
    assert "models:\n  tagger:\n    weights: .modelstream/weights/tagger-" in tags.stdout

    # the user's documents were only read: no `_fold`, nothing added or changed
    assert {d["_id"]: d for d in db.pairs.find()} == before_docs


def test_daemon_trains_on_request_applies_and_recomputes(tmp_path, mongo_server, db_name, db, serve_factory,
                                                         monkeypatch):
    """`train --daemon --apply`: the daemon trains in its background, writes `weights:` into its registry and
    reloads, so the projection's outputs are recomputed under the new version; `reload` of a bad file is
    refused with the reason and changes nothing."""
    from conftest import wait_until

    monkeypatch.syspath_prepend(str(EXAMPLE))
    from synthetic import documents

    monkeypatch.setenv("PYTHONPATH", str(EXAMPLE))  # the daemon imports synthetic.py
    path = write_registry(tmp_path, E2E, uri=mongo_server.uri, db=db_name)
    db.pairs.insert_many(documents(n=600, dim=16, noise=0.3, seed=5))
    serve = serve_factory(path)
    wait_until(lambda: serve.status()["models"]["projection"]["done"] >= 600, 120, message="the first outputs")
    assert cli("validation", "create", "v", "-c", str(path), "--collection", "pairs", "--sample", "100").returncode == 0
    old_version = registry.load(path).versions["projection"]

    trained = cli("train", "align", "-c", str(path), "--daemon", "--apply")
    assert trained.returncode == 0, trained.stderr
    assert "p_at_1: before" in trained.stdout and "reloaded" in trained.stdout
    new_version = registry.load(path).versions["projection"]
    assert new_version != old_version and registry.load(path).registry.models["projection"].weights

    def recomputed() -> bool:
        status = serve.status()
        return (status["models"]["projection"]["version"] == new_version and status["phase"] == "streaming"
                and all(j["state"] == "done" for j in status["jobs"]))
    wait_until(recomputed, 120, message="the reload's recompute")
    assert cli("verify", "-c", str(path)).returncode == 0  # every output is of the new version
    [job] = [j for j in serve.status()["jobs"] if j["kind"] == "train"]
    assert job["training"] == "align" and job["best"][0] > job["before"][0]

    path.write_text(path.read_text().replace("collection: pairs", "collection: pairs\nbogus: 1"))
    refused = cli("reload", "-c", str(path))
    assert refused.returncode != 0 and "bogus" in refused.stderr
    assert serve.status()["models"]["projection"]["version"] == new_version and serve.alive()
