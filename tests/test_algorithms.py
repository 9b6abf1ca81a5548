"""Training algorithms: the round-robin variant by hand, and every built-in plus an entry-point plugin
training a tiny GPT-2 on 2 real ranks under ZeRO-2."""

import math

import pytest

import engine_workers as w
from dist import run_ranks
from gapt_ds.algorithms import available_algorithms, build_algorithm
from gapt_ds.config import GaptConfig
from plugins import installed_plugin

PLUGIN_SOURCE = """
    from gapt_ds.algorithms import Algorithm
    from gapt_ds.gate import COMPRESS, MEMORIZE

    class EveryOtherStep(Algorithm):
        '''Compress on odd optimizer steps: a minimal third-party algorithm.'''

        def __init__(self, cfg):
            super().__init__(cfg)
            self.steps = 0

        def on_step(self, ce, mbe):
            self.steps += 1
            self.phase = COMPRESS if self.steps % 2 else MEMORIZE
            return {"plugin/steps": self.steps}
"""


def test_round_robin_weights_one_layer_per_step_and_resumes():
    algo = build_algorithm(GaptConfig(algorithm="gapt_round_robin", phase="compress", mbe_weight=3.0))
    seen = []
    for _ in range(4):
        seen.append(algo.layer_weights(3))
        algo.on_step(2.0, [1.0, 1.0, 1.0])
    assert seen == [[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]]
    again = build_algorithm(GaptConfig(algorithm="gapt_round_robin", phase="compress", mbe_weight=3.0))
    again.load_state_dict(algo.state_dict())
    assert again.layer_weights(3) == algo.layer_weights(3) == [0, 3.0, 0]
    memorize = build_algorithm(GaptConfig(algorithm="gapt_round_robin", phase="memorize"))
    assert memorize.layer_weights(2) == [0.0, 0.0]


def test_unknown_algorithm_names_its_key_and_the_available_ones():
    with pytest.raises(ValueError) as err:
        build_algorithm(GaptConfig(algorithm="sgd"))
    line = next(x for x in str(err.value).splitlines() if x.strip().startswith("gapt.algorithm:"))
    assert "available: ce, gapt, gapt_round_robin, mbe" in line, str(err.value)


def algorithms_worker(rank: int, names: list[str], steps: int) -> dict:
    out = {}
    for name in names:
        gapt = {"algorithm": name, "mbe_weight": 0.5, "gate": w.FAST_GATE}
        engine = w.make_engine(w.ds_config(2, gapt=gapt))
        losses, phases, weights = [], [], []
        for s in range(steps):
            losses.append(w.train_step(engine, s, rank)[0])
            phases.append(engine.last_step.phase)
            weights.append(engine.last_step.mbe_weights)
        out[name] = {"losses": losses, "phases": phases, "class": type(engine.algorithm).__name__,
                     "mbe": engine.last_step.mbe, "weights": weights}
    return out


@pytest.mark.distributed
def test_every_algorithm_and_an_entry_point_plugin_train_at_two_ranks(tmp_path):
    module = "gapt_ds_test_algo_plugin"
    eps = {"gapt_ds.algorithms": {"every_other": f"{module}:EveryOtherStep"}}
    with installed_plugin(tmp_path, "gapt-ds-test-algo-plugin", module, eps, PLUGIN_SOURCE):
        assert "every_other" in available_algorithms()
        names = ["ce", "mbe", "gapt", "gapt_round_robin", "every_other"]
        r0, r1 = run_ranks(algorithms_worker, tmp_path / "out", names=names, steps=8)
    expected_class = {"ce": "CrossEntropyOnly", "mbe": "FixedWeightMBE", "gapt": "GatedPhaseTransition",
                      "gapt_round_robin": "RoundRobinGAPT", "every_other": "EveryOtherStep"}
    for name in names:
        run = r0[name]
        assert run["class"] == expected_class[name]
        assert all(math.isfinite(x) for x in run["losses"]) and run["losses"][-1] < run["losses"][0], name
        assert run["phases"] == r1[name]["phases"], name
    assert set(r0["ce"]["phases"]) == {1} and set(r0["mbe"]["phases"]) == {2}
    assert r0["every_other"]["phases"] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert {1, 2} <= set(r0["gapt"]["phases"])
    assert r0["mbe"]["mbe"][0] < r0["ce"]["mbe"][0]  # always compressing lowers MBE against the baseline
    # the logged weights are the ones applied: w split over the 2 layers, or all of w on one layer in turn
    for name in names:
        for phase, weights in zip(r0[name]["phases"], r0[name]["weights"]):
            if phase == 1:
                assert weights == [0.0, 0.0], name
            elif name == "gapt_round_robin":
                assert sorted(weights) == [0.0, 0.5], weights
            else:
                assert weights == [0.25, 0.25], (name, weights)
    rr = r0["gapt_round_robin"]
    compress_turns = [i for i, p in enumerate(rr["phases"]) if p == 2]
    assert [rr["weights"][i].index(0.5) for i in compress_turns] == [i % 2 for i in compress_turns]
