"""CLIP-VG's self-paced curriculum: reliability scores, histograms and r > h subsets; SSA and MSA
selection with injected accuracies; resume after an interruption; one real end-to-end SSA run.

Sources are the synthetic noisy pseudo-labels (16 shapes images per source, 32 px). The schedule
tests replace training and scoring with fakes that read the stage's training file and return known
accuracies and reliabilities, so the selection logic is checked exactly and in milliseconds."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.curriculum import driver, reliability
from vlalign_jax.curriculum.command import run_curriculum
from vlalign_jax.curriculum.driver import Curriculum, evaluate_checkpoint
from vlalign_jax.curriculum.settings import build_curriculum_config
from vlalign_jax.curriculum.workspace import STATE_FILE, read_jsonl
from vlalign_jax.data.sources.grounding_splits import GroundingSplit
from vlalign_jax.eval.grounding import GroundingPredictions

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "clipvg" / "curriculum_shapes.py"
SMALL = ("{'clip': {'vision': {'image_size': 32, 'patch_size': 8, 'width': 32, 'layers': 1, 'heads': 2, "
         "'mlp_dim': 64}, 'text': {'context_length': 24, 'width': 32, 'layers': 1, 'heads': 2, 'mlp_dim': 64}, "
         "'embed_dim': 16}, 'feature_layers': (0,), 'hidden_dim': 32, 'visu_proj_in_dim': 32, 'fusion_layers': 1}")
METRIC = "eval/grounding/val/acc@0.5"
N = 16  # pseudo-labels per source


def config(**overrides):
    pairs = {"model.overrides": SMALL, "train.epochs": 0, "train.steps": 2, "train.batch_size": 8,
             "train.checkpoint_every": 2, "train.eval_every": 2, "train.progress_bar": False, "eval.batch_size": 8,
             "curriculum.thresholds": (0.0, 0.5), "curriculum.synthetic_num_train": N,
             "curriculum.synthetic_num_val": 8}
    pairs.update(overrides)
    return build_curriculum_config(CONFIG, [(k, repr(v) if not isinstance(v, str) else v) for k, v in pairs.items()])


class FakeTrain:
    """Stands in for `train.loop.train`: records the stage and its training labels, returns
    `accuracies[stage name]`; raises after `fail_after` calls to simulate an interruption."""

    def __init__(self, accuracies=None, fail_after=None):
        self.accuracies, self.fail_after = accuracies or {}, fail_after
        self.calls, self.labels, self.configs = [], {}, {}

    def __call__(self, config, workdir):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        name = Path(workdir).name
        self.calls.append(name)
        path = Path(config.data.split_root) / "unc" / "unc_train_pseudo.jsonl"
        self.labels[name] = read_jsonl(path)
        self.configs[name] = config
        return {METRIC: self.accuracies.get(name, 0.1), "loss": 1.0}


class FakeScore:
    """Stands in for scoring: r of source `s` under the measurer in stage folder `m` is `r[s, m]`."""

    def __init__(self, r):
        self.r, self.calls = r, []

    def __call__(self, config, measurer_dir, source, batch_size):
        key = (Path(source.path).stem.removeprefix("unc_"), Path(measurer_dir).name)
        self.calls.append(key)
        iou = np.asarray(self.r[key], np.float32)
        return GroundingPredictions(np.zeros((len(iou), 4), np.float32), np.zeros((len(iou), 4), np.float32), iou)


def ramp(offset=0.0):
    """N reliabilities spread over [0, 1): a known share above each threshold."""
    return (np.arange(N) / N + offset) % 1.0


def state(workdir):
    return json.loads((Path(workdir) / STATE_FILE).read_text())


# ---- reliability ---------------------------------------------------------------------------------
def test_histogram_bins_are_right_closed_and_subsets_strict_in_float32():
    r = np.array([0.0, 1e-4, 0.001, 0.0011, 0.5, 0.5000001, 1.0, 0.0], np.float32)
    hist = reliability.histogram(r, 1000)
    assert hist.zeros == 2 and hist.total == 8 and len(hist.counts) == 1000
    expected = np.zeros(1000, np.int64)
    expected[[0, 1, 499, 500, 999]] = [2, 1, 1, 1, 1]  # (0, .001] holds 1e-4 and .001; .5 is in (.499, .5]
    np.testing.assert_array_equal(hist.counts, expected)
    np.testing.assert_array_equal(reliability.subset_indices(r, 0.5), [5, 6])
    np.testing.assert_array_equal(reliability.subset_indices(r, 0.0), [1, 2, 3, 4, 5, 6])
    # float32(0.3) is not > 0.3 when compared as the reference's torch does (in float32).
    assert reliability.subset_indices(np.float32([0.3]), 0.3).size == 0
    assert reliability.summary(r, (0.0, 0.5))["selected"] == {"0.0": 6, "0.5": 2}


# ---- SSA -----------------------------------------------------------------------------------------
def test_ssa_trains_the_selections_and_keeps_the_best_threshold(tmp_path):
    grid = (0.0, 0.25, 0.5, 0.75)
    r = ramp()
    accuracies = {"measure": 0.2, "h_0_0": 0.3, "h_0_25": 0.5, "h_0_5": 0.5, "h_0_75": 0.4}
    fake = FakeTrain(accuracies)
    final = run_curriculum(config(**{"curriculum.thresholds": grid}), tmp_path / "a", fake,
                           FakeScore({("template", "measure"): r}))
    assert fake.calls == ["measure", "h_0_0", "h_0_25", "h_0_5", "h_0_75"]
    assert final["stage"] == "round_0/h_0_5" and final["threshold"] == 0.5  # tie with 0.25: the larger h
    assert final["metric"] == 0.5
    source = read_jsonl(tmp_path / "a" / "synthetic_data" / "split" / "unc" / "unc_template.jsonl")
    assert fake.labels["measure"] == source
    # The measurer trained on every label: it is the baseline, reported with its label noise.
    chosen = [x for x, value in zip(source, r) if np.float32(value) > np.float32(0.5)]
    assert final["noisy_fraction"] == sum(x["noisy"] for x in chosen) / len(chosen)
    assert final["all_labels"] == {"stage": "round_0/measure", "metric": 0.2, "size": N,
                                   "noisy_fraction": sum(x["noisy"] for x in source) / N}
    for h in grid:
        name = f"h_{str(h).replace('.', '_')}"
        chosen = [source[i] for i in range(N) if np.float32(r[i]) > np.float32(h)]
        assert fake.labels[name] == chosen  # the candidate trains on exactly r > h
        assert read_jsonl(tmp_path / "a" / "round_0" / "selections" / f"template__{name}.jsonl") == chosen
        assert fake.configs[name].model.init_from == ""  # retrain_from="init": CLIP, not the measurer
    recorded = state(tmp_path / "a")["decisions"]["round_0"]["candidates"]
    assert [(c["threshold"], c["metric"], c["size"]) for c in recorded] == [
        (0.0, 0.3, 15), (0.25, 0.5, 11), (0.5, 0.5, 7), (0.75, 0.4, 3)]

    # tie_break smaller; greedy scan stops at the first drop (0.75 never trains); measurer init.
    fake = FakeTrain({**accuracies, "h_0_5": 0.45, "h_0_75": 0.9})
    final = run_curriculum(config(**{"curriculum.thresholds": grid, "curriculum.scan": "greedy",
                                     "curriculum.retrain_from": "measurer"}), tmp_path / "b", fake,
                           FakeScore({("template", "measure"): r}))
    assert fake.calls == ["measure", "h_0_0", "h_0_25", "h_0_5"] and final["threshold"] == 0.25
    assert fake.configs["h_0_25"].model.init_from == str((tmp_path / "b" / "round_0" / "measure").absolute())


def test_ssa_rounds_measure_with_the_previous_result(tmp_path):
    r0, r1 = ramp(), ramp(0.5)
    fake = FakeTrain({"h_0_0": 0.2, "h_0_5": 0.6})
    score = FakeScore({("template", "measure"): r0, ("template", "h_0_5"): r1})
    final = run_curriculum(config(**{"curriculum.rounds": 2}), tmp_path, fake, score)
    assert score.calls == [("template", "measure"), ("template", "h_0_5")]  # round 1 measures with round 0's best
    assert fake.calls == ["measure", "h_0_0", "h_0_5", "h_0_0", "h_0_5"]  # no new measurer in round 1
    assert final["round"] == 1 and final["stage"] == "round_1/h_0_5" and final["measurer"] == "round_0/h_0_5"
    assert (tmp_path / "round_1" / "scores" / "template.jsonl").exists()


# ---- resume --------------------------------------------------------------------------------------
def test_an_interrupted_curriculum_resumes_without_retraining_finished_stages(tmp_path):
    accuracies = {"t1_template__by_relation__h_0_5": 0.7}
    r = {(s, f"measure_{m}"): ramp(0.1 * k) for k, (s, m) in enumerate(
        [("template", "template"), ("template", "relation"), ("relation", "template"), ("relation", "relation")])}
    msa = {"curriculum.mode": "msa", "curriculum.sources": ("template", "relation")}
    straight = FakeTrain(accuracies)
    want = run_curriculum(config(**msa), tmp_path / "straight", straight, FakeScore(r))

    first = FakeTrain(accuracies, fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_curriculum(config(**msa), tmp_path / "resumed", first, FakeScore(r))
    second, score = FakeTrain(accuracies), FakeScore(r)
    got = run_curriculum(config(**msa), tmp_path / "resumed", second, score)
    assert first.calls == straight.calls[:5] and second.calls == straight.calls[5:]  # nothing trained twice
    assert score.calls == []  # every source was scored before the interruption
    assert got == want
    a, b = state(tmp_path / "straight"), state(tmp_path / "resumed")
    assert a["stages"] == b["stages"] and a["decisions"] == b["decisions"] and a["scores"] == b["scores"]
    assert read_jsonl(tmp_path / "resumed" / want["selection"]) == read_jsonl(tmp_path / "straight" / want["selection"])

    # A stage lost from the state file (killed after training, before the state was written) is
    # handed to the trainer again, which resumes it from its checkpoints; nothing else reruns.
    data = state(tmp_path / "resumed")
    del data["stages"]["round_0/" + straight.calls[-1]]
    (tmp_path / "resumed" / STATE_FILE).write_text(json.dumps(data))
    third = FakeTrain(accuracies)
    assert run_curriculum(config(**msa), tmp_path / "resumed", third, FakeScore(r)) == want
    assert third.calls == [straight.calls[-1]]

    with pytest.raises(ValueError, match="curriculum.thresholds"):  # another config: not a resume
        run_curriculum(config(**msa, **{"curriculum.thresholds": (0.2,)}), tmp_path / "resumed", FakeTrain(),
                       FakeScore(r))


# ---- MSA -----------------------------------------------------------------------------------------
def test_msa_picks_source_and_measurer_at_h0_then_scans_and_unions(tmp_path):
    r = {("template", "measure_template"): ramp(), ("template", "measure_relation"): ramp(0.25),
         ("relation", "measure_relation"): ramp(0.5), ("relation", "measure_template"): ramp(0.75)}
    accuracies = {"t1_template__by_template__h_0_5": 0.3, "t1_template__by_relation__h_0_5": 0.4,
                  "t1_relation__by_relation__h_0_5": 0.35, "t1_relation__by_template__h_0_5": 0.1,
                  "t1_template__by_relation__h_0_0": 0.2,
                  "t2_relation__by_relation__h_0_5": 0.5, "t2_relation__by_template__h_0_5": 0.6,
                  "t2_relation__by_template__h_0_0": 0.7}
    msa = {"curriculum.mode": "msa", "curriculum.sources": ("template", "relation")}
    fake = FakeTrain(accuracies)
    final = run_curriculum(config(**msa), tmp_path / "a", fake, FakeScore(r))
    assert fake.calls == ["measure_template", "measure_relation", "all_sources",
                          "t1_template__by_template__h_0_5", "t1_template__by_relation__h_0_5",
                          "t1_relation__by_relation__h_0_5", "t1_relation__by_template__h_0_5",
                          "t1_template__by_relation__h_0_0",  # the h0 candidate is not retrained in the scan
                          "t2_relation__by_relation__h_0_5", "t2_relation__by_template__h_0_5",
                          "t2_relation__by_template__h_0_0"]
    assert final["order"] == [("template", "relation", 0.5), ("relation", "template", 0.0)]
    assert final["stage"] == "round_0/t2_relation__by_template__h_0_0" and final["metric"] == 0.7

    split = tmp_path / "a" / "synthetic_data" / "split" / "unc"
    template, relation = read_jsonl(split / "unc_template.jsonl"), read_jsonl(split / "unc_relation.jsonl")

    def above(records, r_values, h):
        return [records[i] for i in range(N) if np.float32(r_values[i]) > np.float32(h)]

    pool1 = above(template, r["template", "measure_relation"], 0.5)
    pool2 = pool1 + above(relation, r["relation", "measure_template"], 0.0)
    selections = tmp_path / "a" / "round_0" / "selections"
    assert read_jsonl(selections / "pool_t1.jsonl") == pool1 and read_jsonl(selections / "pool_t2.jsonl") == pool2
    # The baseline trains on every label of both sources; both are reported with their label noise.
    assert fake.labels["all_sources"] == template + relation
    assert final["all_labels"] == {"stage": "round_0/all_sources", "metric": 0.1, "size": 2 * N,
                                   "noisy_fraction": sum(x["noisy"] for x in template + relation) / (2 * N)}
    assert final["noisy_fraction"] == sum(x["noisy"] for x in pool2) / len(pool2)
    assert fake.labels["t2_relation__by_template__h_0_0"] == pool2  # D <- D + selected
    assert fake.labels["t2_relation__by_relation__h_0_5"] == pool1 + above(relation, r["relation", "measure_relation"],
                                                                           0.5)
    # Every (source, measurer) pair is scored and plotted: SR and CR.
    for s in ("template", "relation"):
        for m in ("template", "relation"):
            with Image.open(tmp_path / "a" / "round_0" / "histograms" / f"{s}__by_{m}.png") as image:
                assert image.size == (1100, 440)

    # "no_gain" stops before a step that lowers the accuracy; only own measurers without cross-source.
    fake = FakeTrain({**accuracies, "t2_relation__by_relation__h_0_5": 0.3, "t2_relation__by_relation__h_0_0": 0.2})
    final = run_curriculum(config(**msa, **{"curriculum.msa_stop": "no_gain", "curriculum.msa_cross_source": False}),
                           tmp_path / "b", fake, FakeScore(r))
    assert fake.calls[3:] == ["t1_template__by_template__h_0_5", "t1_relation__by_relation__h_0_5",
                              "t1_relation__by_relation__h_0_0", "t2_template__by_template__h_0_5",
                              "t2_template__by_template__h_0_0"]
    assert final["order"] == [("relation", "relation", 0.5)]  # step 2 (best 0.3 < 0.35) was not kept
    assert not state(tmp_path / "b")["decisions"]["step_2"]["kept"]


# ---- one real run --------------------------------------------------------------------------------
def test_real_ssa_run_scores_selects_trains_and_resumes(tmp_path, monkeypatch):
    from vlalign_jax.data.grounding import grounding_data
    from vlalign_jax.eval.grounding import predict_source
    from vlalign_jax.methods import make_method
    from vlalign_jax.train.checkpoint import load_params

    cfg = config()
    final = run_curriculum(cfg, tmp_path)
    recorded = state(tmp_path)
    cur = Curriculum(cfg, tmp_path)
    measurer = cur.measurer("round_0/measure", "template")
    model = make_method(measurer.config).model
    data = grounding_data(measurer.config.data, 32, 24)
    source = GroundingSplit(cur.source_paths["template"], cur.image_root, "unc")
    want = predict_source(model, load_params(measurer.workdir), source, data.eval_preprocess, 8).iou
    scores = read_jsonl(tmp_path / "round_0" / "scores" / "template.jsonl")
    # The same batches through the same model: equal up to XLA recompiling the predictor.
    np.testing.assert_allclose([s["r"] for s in scores], want, rtol=0, atol=1e-6)
    assert [s["image_file"] for s in scores] == [source.record(i)["image_file"] for i in range(N)]
    r = reliability.read_scores(tmp_path / "round_0" / "scores" / "template.jsonl")
    for h in (0.0, 0.5):
        path = tmp_path / "round_0" / "selections" / f"template__h_{str(h).replace('.', '_')}.jsonl"
        chosen = GroundingSplit(path, cur.image_root, "unc")
        assert [chosen.record(i) for i in range(len(chosen))] == [source.record(i) for i in range(N) if r[i] > h]
    with Image.open(tmp_path / "round_0" / "histograms" / "template.png") as image:
        assert image.size == (1100, 440)
    hist = json.loads((tmp_path / "round_0" / "histograms" / "template.json").read_text())
    assert hist["total"] == N and sum(hist["counts"]) + hist["zeros"] == N and len(hist["counts"]) == 1000

    stages = recorded["stages"]
    trained = {k: v["metric"] for k, v in stages.items() if v["metric"] is not None}
    candidates = {k: v for k, v in trained.items() if k != "round_0/measure"}
    best = max(candidates, key=lambda k: (candidates[k], float(k.split("h_")[1].replace("_", "."))))
    assert final["stage"] == best and final["metric"] == candidates[best]
    for key in trained:  # each stage a normal run: checkpoints, and its last eval is the recorded metric
        assert (tmp_path / key / "checkpoints" / "2").is_dir()
        evals = [row for row in map(json.loads, (tmp_path / key / "metrics.jsonl").read_text().splitlines())
                 if METRIC in row]
        assert evals[-1][METRIC] == pytest.approx(trained[key], abs=1e-6)

    # Lose the final stage from the state: the rerun's train() finds that run finished (its last
    # checkpoint is step 2), trains nothing, and the accuracy is read from its checkpoint instead.
    losses_before = (tmp_path / final["stage"] / "metrics.jsonl").read_text().count('"loss"')
    del recorded["stages"][final["stage"]]
    (tmp_path / STATE_FILE).write_text(json.dumps(recorded))
    evaluated = []
    monkeypatch.setattr(driver, "evaluate_checkpoint",
                        lambda config, workdir: evaluated.append(workdir) or evaluate_checkpoint(config, workdir))
    assert run_curriculum(cfg, tmp_path) == final
    assert evaluated == [tmp_path / final["stage"]]
    assert (tmp_path / final["stage"] / "metrics.jsonl").read_text().count('"loss"') == losses_before


# ---- config and command --------------------------------------------------------------------------
def test_a_training_config_gets_the_defaults_and_bad_options_are_named():
    import argparse

    from vlalign_jax.curriculum import command
    from vlalign_jax.curriculum.settings import DEFAULT_THRESHOLDS, CurriculumSettings
    from vlalign_jax.train.config import ConfigError

    unsupervised = CONFIG.with_name("unsupervised.py")
    settings = CurriculumSettings.from_config(build_curriculum_config(unsupervised))
    assert settings.mode == "ssa" and settings.sources == ("train_pseudo",) and settings.rounds == 1
    assert settings.thresholds == DEFAULT_THRESHOLDS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert (settings.msa_h0, settings.histogram_bins, settings.retrain_from) == (0.5, 1000, "init")
    assert settings.selection_metric == METRIC
    with pytest.raises(ConfigError, match="adapts one source"):
        CurriculumSettings.from_config(config(**{"curriculum.sources": ("template", "relation")}))
    with pytest.raises(ConfigError, match="curriculum.scan"):
        CurriculumSettings.from_config(config(**{"curriculum.scan": "binary"}))
    with pytest.raises(ConfigError, match="unknown config field 'curriculum.treshold"):
        config(**{"curriculum.tresholds": (0.5,)})
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--config", str(CONFIG), "--workdir", "runs/x"])
    assert (args.config, args.workdir) == (str(CONFIG), "runs/x")
