"""gapt_ds.optim: parameter groups, Muon tags, optimizer names and their errors; one 2-rank ZeRO-2 run that
trains with a DeepSpeed optimizer, DeepSpeed's Muon, torch.optim ones and an installed entry-point plugin."""

import copy

import pytest
import torch

import engine_workers as w
from dist import run_ranks
from plugins import installed_plugin
from gapt_ds import optim

HIDDEN = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
PLUGIN = "gapt-ds-test-optim-plugin"


def names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def hidden_matrices(model) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith("transformer.h.") and n.endswith(HIDDEN)}


def test_weight_decay_only_on_block_matrices():
    model = w.tiny_model()
    decay, no_decay = optim.param_groups(model)
    assert "weight_decay" not in decay and no_decay["weight_decay"] == 0.0  # decay: the config's value
    assert names(model, decay["params"]) == hidden_matrices(model)
    rest = names(model, no_decay["params"])
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
            "transformer.h.0.ln_1.weight", "transformer.h.0.attn.c_attn.bias"} <= rest
    assert model.lm_head.weight is model.transformer.wte.weight  # the tied head is the undecayed wte
    assert rest | names(model, decay["params"]) == {n for n, _ in model.named_parameters()}
    assert not rest & hidden_matrices(model)


def test_muon_tags_hidden_matrices_only():
    model = w.tiny_model()
    optim.tag_muon(model)
    assert {n for n, p in model.named_parameters() if p.use_muon} == hidden_matrices(model)
    embeddings_and_head = (model.transformer.wte.weight, model.transformer.wpe.weight, model.lm_head.weight)
    assert not any(p.use_muon for p in embeddings_and_head)
    with pytest.raises(ValueError, match="cannot find the transformer blocks"):
        optim.muon_flags(torch.nn.Linear(2, 2))


def test_muon_grouping_overrides_deepspeeds_own_tags_and_restores_deepspeed():
    import deepspeed

    class Config:  # what set_optimizer_flags reads of a DeepSpeedConfig
        optimizer_name, optimizer_params = "muon", {}

    model = w.tiny_model()
    original = deepspeed.set_optimizer_flags
    original(Config, model)  # DeepSpeed's rule: 2-D and no "embed"/"lm_head" in the name
    assert model.transformer.wte.weight.use_muon and model.transformer.wpe.weight.use_muon
    cfg = {"optimizer": {"type": "Muon"}}
    with optim.muon_grouping(model, cfg):
        deepspeed.set_optimizer_flags(Config, model)  # as deepspeed.initialize calls it
    assert deepspeed.set_optimizer_flags is original
    assert {n for n, p in model.named_parameters() if p.use_muon} == hidden_matrices(model)
    with pytest.raises(RuntimeError, match="could not be applied"):
        with optim.muon_grouping(model, cfg):
            pass  # initialize that never tags
    with optim.muon_grouping(model, {"optimizer": {"type": "AdamW"}}):
        assert deepspeed.set_optimizer_flags is original  # not Muon: nothing patched


@pytest.mark.parametrize("name", ["AdamW", "adam", "Muon", "LAMB", "lion"])
def test_deepspeed_names_are_left_to_deepspeed(name):
    model = w.tiny_model()
    cfg = w.ds_config(2)
    cfg["optimizer"] = {"type": name, "params": {"lr": 1e-3, "anything": 1}}
    before = copy.deepcopy(cfg)
    optimizer, groups, engine_cfg = optim.build_optimizer(model, cfg)
    assert optimizer is None and engine_cfg == before and cfg == before
    assert [names(model, g["params"]) for g in groups] == [names(model, g["params"]) for g in optim.param_groups(model)]


def test_torch_optimizer_by_name_becomes_the_client_optimizer():
    model = w.tiny_model()
    cfg = w.ds_config(2, offload=True)
    cfg["optimizer"] = {"type": "sgd", "params": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}}
    optimizer, groups, engine_cfg = optim.build_optimizer(model, cfg)
    assert type(optimizer) is torch.optim.SGD and "optimizer" in cfg and "optimizer" not in engine_cfg
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert optimizer.param_groups[0]["momentum"] == 0.9
    # DeepSpeed refuses client optimizers under ZeRO / with offload unless told otherwise
    assert engine_cfg["zero_allow_untested_optimizer"] is True and engine_cfg["zero_force_ds_cpu_optimizer"] is False
    plain = w.ds_config(0)
    plain["optimizer"] = {"type": "RAdam", "params": {"betas": [0.8, 0.9]}}
    optimizer, _, engine_cfg = optim.build_optimizer(model, plain)
    assert type(optimizer) is torch.optim.RAdam and optimizer.defaults["betas"] == (0.8, 0.9)
    assert "zero_allow_untested_optimizer" not in engine_cfg and "zero_force_ds_cpu_optimizer" not in engine_cfg
    for key, value, match in (("zero_force_ds_cpu_optimizer", True, "zero_force_ds_cpu_optimizer"),
                              ("zero_allow_untested_optimizer", False, "not one DeepSpeed tested")):
        explicit = dict(cfg, **{key: value})
        with pytest.raises(ValueError, match=match):
            optim.build_optimizer(model, explicit)


def test_unknown_name_lists_every_source():
    with pytest.raises(ValueError) as err:
        optim.build_optimizer(w.tiny_model(), {"optimizer": {"type": "RAdamm"}})
    msg = str(err.value)
    assert "unknown optimizer type 'RAdamm'" in msg and "did you mean 'radam'" in msg
    for fragment in ("DeepSpeed: adagrad, adam, adamw", "muon", "torch.optim: ", "SGD", "Adafactor",
                     "entry points (gapt_ds.optimizers)"):
        assert fragment in msg
    with pytest.raises(ValueError, match="needs a \"type\""):
        optim.build_optimizer(w.tiny_model(), {"optimizer": {"params": {}}})


def test_bad_params_name_the_optimizer_and_the_key():
    model = w.tiny_model()
    with pytest.raises(ValueError) as err:
        optim.build_optimizer(model, {"optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentun": 0.9}}})
    assert "optimizer 'SGD' has no parameter 'momentun' (did you mean 'momentum'?)" in str(err.value)
    with pytest.raises(ValueError, match="optimizer 'RAdam' has no parameter 'torch_adam'"):
        optim.build_optimizer(model, {"optimizer": {"type": "RAdam", "params": {"torch_adam": True}}})
    with pytest.raises(ValueError, match="optimizer 'RAdam': Invalid learning rate"):
        optim.build_optimizer(model, {"optimizer": {"type": "RAdam", "params": {"lr": -1.0}}})


# -- 2 real ranks, ZeRO-2, fp32 -----------------------------------------------------------------------
RUNS = {
    "adamw": ({"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01, "torch_adam": True}}, False),
    "muon": ({"type": "Muon", "params": {"lr": 0.02, "adam_lr": 3e-3, "torch_adam": True}}, False),
    "sgd": ({"type": "SGD", "params": {"lr": 0.3, "momentum": 0.9}}, False),
    "nadam_offload": ({"type": "nadam", "params": {"lr": 3e-3}}, True),
    "plugin": ({"type": "signsgd", "params": {"lr": 3e-3}}, False),
}


def optimizers_worker(rank: int, steps: int) -> dict:
    """Trains each RUNS entry through build_optimizer + muon_grouping + gapt_ds.initialize, on a fixed batch."""
    import gapt_ds

    torch._dynamo.config.disable = True  # DeepSpeed's Muon torch.compiles Newton-Schulz: ~35 s of C++ on CPU
    out = {}
    for key, (block, offload) in RUNS.items():
        model = w.tiny_model()
        cfg = w.ds_config(2, offload=offload)
        cfg["optimizer"] = block
        optimizer, params, engine_cfg = optim.build_optimizer(model, cfg)
        with optim.muon_grouping(model, engine_cfg):
            engine, *_ = gapt_ds.initialize(model=model, optimizer=optimizer, model_parameters=params,
                                            config=engine_cfg)
        losses = [w.train_step(engine, 0, rank)[0] for _ in range(steps)]
        basic = engine.basic_optimizer
        by_id = {id(p): n for n, p in engine.module.named_parameters()}
        groups = [{"names": {by_id[id(p)] for p in bit16}, "use_muon": g.get("use_muon"),
                   "weight_decay": g.get("weight_decay")}
                  for g, bit16 in zip(basic.param_groups, engine.optimizer.bit16_groups)]
        out[key] = {"losses": losses, "class": f"{type(basic).__module__}.{type(basic).__qualname__}",
                    "wrapper": type(engine.optimizer).__name__, "groups": groups}
    return out


SIGN_SGD = """
    import torch

    class SignSGD(torch.optim.Optimizer):
        def __init__(self, params, lr=1e-3, weight_decay=0.0):
            super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(1 - group["lr"] * group["weight_decay"]).add_(p.grad.sign(), alpha=-group["lr"])
"""


@pytest.fixture
def optimizer_plugin(tmp_path):
    """A tiny package registering ``SignSGD`` under ``gapt_ds.optimizers``, pip-installed for this test."""
    module = "gapt_ds_test_optim_plugin"
    with installed_plugin(tmp_path, PLUGIN, module, {"gapt_ds.optimizers": {"SignSGD": f"{module}:SignSGD"}},
                          SIGN_SGD):
        yield f"{module}.SignSGD"


@pytest.mark.distributed
def test_two_ranks_zero2_train_with_each_kind_of_optimizer(tmp_path, optimizer_plugin):
    steps = 4
    ranks = run_ranks(optimizers_worker, tmp_path / "out", steps=steps)
    model = w.tiny_model()
    hidden = hidden_matrices(model)
    expected = {"adamw": "torch.optim.adamw.AdamW",
                "muon": "deepspeed.runtime.zero.muon.muon_optimizer.MuonWithAuxAdam",
                "sgd": "torch.optim.sgd.SGD", "nadam_offload": "torch.optim.nadam.NAdam", "plugin": optimizer_plugin}
    for key, cls in expected.items():
        for rank, result in enumerate(ranks):
            run = result[key]
            assert run["class"] == cls and run["wrapper"] == "DeepSpeedZeroOptimizer", (key, rank, run["class"])
            losses = run["losses"]
            assert all(torch.isfinite(torch.tensor(losses))), (key, losses)
            assert losses[-1] < losses[0] - 0.02, (key, rank, losses)
        assert ranks[0][key]["groups"] == ranks[1][key]["groups"]
    adamw = ranks[0]["adamw"]["groups"]
    assert adamw[0]["names"] == hidden and [g["weight_decay"] for g in adamw] == [0.01, 0.0]
    muon = ranks[0]["muon"]["groups"]
    muon_names = set().union(*(g["names"] for g in muon if g["use_muon"]))
    adam_names = set().union(*(g["names"] for g in muon if not g["use_muon"]))
    assert muon_names == hidden  # DeepSpeed alone would also put wte/wpe (and the tied head) on Muon
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= adam_names
    assert all(g["weight_decay"] == 0.0 for g in muon if not g["use_muon"])
