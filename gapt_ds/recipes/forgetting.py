"""Catastrophic forgetting with conflicting experience (docs/algorithm.md §6.3), through the same engine,
gate and config.

A ReLU MLP 10 -> 20 -> 10 learns task A, then task B. The tasks draw inputs from opposite regions
(N(+m·u, I) vs N(-m·u, I)) and labels from teachers θ₀ + Δθ vs θ₀ − Δθ, where Δθ is a random low-rank
shift of every weight matrix. The loss is L1. MBE is measured on the hidden layer (post-ReLU) over each
batch (``mbe_mode: global``), and the model runs through ``gapt_ds.initialize`` like a language model.

Metrics (``summary.json``): L1 on held-out A and B after training; ``forgetting`` (A's loss after B minus
after A); ``separation`` = ‖μ_A − μ_B‖ / sqrt(½(var_A + var_B)) of the hidden representations, where var
is the mean squared distance to the class mean.

    gapt-ds recipe forgetting --arm gapt --seed 0 --run-dir runs/forgetting/gapt-s0
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from gapt_ds import runtime

MASTER_PORT = "29511"  # without a launcher; gapt-ds recipe sets a free one per run

DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 64,
    "gradient_accumulation_steps": 1,
    "steps_per_print": 10**9,
    "optimizer": {"type": "Adam", "params": {"lr": 0.003, "torch_adam": True}},
    "zero_optimization": {"stage": 0},
    "gapt": {"mbe_mode": "global", "layers": "all", "mbe_weight": 1.0,
             "gate": {"patience_memorize": 50, "patience_compress": 50, "ce_delta": 0.001, "mbe_delta": 0.01}},
}


class MLP(nn.Module):
    """10 -> 20 (ReLU) -> 10; ``forward(x, y)`` returns the L1 loss (the task loss the gate sees)."""

    def __init__(self, d_in: int = 10, d_hidden: int = 20, d_out: int = 10) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc1(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(x))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.predict(x) - y).abs().mean()


def separation(h_a: torch.Tensor, h_b: torch.Tensor) -> float:
    """‖μ_A − μ_B‖ / sqrt(½(var_A + var_B)); var = mean squared distance to the class mean."""
    mu_a, mu_b = h_a.mean(0), h_b.mean(0)
    var_a = (h_a - mu_a).square().sum(1).mean()
    var_b = (h_b - mu_b).square().sum(1).mean()
    return float((mu_a - mu_b).norm() / torch.sqrt(0.5 * (var_a + var_b)).clamp_min(1e-12))


class Tasks:
    """The two conflicting tasks: opposite input regions, teachers θ₀ ± Δθ (low-rank Δθ)."""

    def __init__(self, seed: int, offset: float = 2.0, shift_rank: int = 2, shift_scale: float = 1.0) -> None:
        g = torch.Generator().manual_seed(seed)
        base = MLP()
        with torch.no_grad():
            for p in base.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5 if p.dim() == 2 else 1.0))
        self.teachers = {}
        for sign, name in ((1.0, "A"), (-1.0, "B")):
            t = copy.deepcopy(base)
            with torch.no_grad():
                for w in (t.fc1.weight, t.fc2.weight):
                    gs = torch.Generator().manual_seed(seed * 31 + w.shape[0])
                    u = torch.randn(w.shape[0], shift_rank, generator=gs)
                    v = torch.randn(w.shape[1], shift_rank, generator=gs)
                    w.add_(sign * shift_scale * (u @ v.T) / (shift_rank * w.shape[1]) ** 0.5)
            self.teachers[name] = t.requires_grad_(False)
        self.direction = torch.randn(10, generator=g)
        self.direction /= self.direction.norm()
        self.offset = offset

    def sample(self, task: str, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        sign = 1.0 if task == "A" else -1.0
        x = torch.randn(n, 10, generator=g) + sign * self.offset * self.direction
        with torch.no_grad():
            return x, self.teachers[task].predict(x)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gapt-ds recipe forgetting", description=__doc__.split("\n")[0],
                                formatter_class=runtime.HelpFormatter)
    p.add_argument("--arm", default="gapt", help="algorithm: ce (baseline) | gapt | mbe")
    p.add_argument("--seed", type=int, default=0, help="model init and data order")
    p.add_argument("--steps-per-task", type=int, default=1500, help="optimizer steps on each task")
    p.add_argument("--run-dir", required=True, help="where everything of the run goes")
    p.add_argument("--deepspeed_config", default=None, help="DeepSpeed JSON (default: the recipe's built-in config)")
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    args = p.parse_args(argv)
    if args.steps_per_task < 1:
        raise ValueError(f"--steps-per-task must be >= 1, got {args.steps_per_task}")
    return args


def resolve_ds_config(args: argparse.Namespace) -> dict:
    """The recipe's (or the given) DeepSpeed config with the arm's algorithm and TensorBoard in the run dir."""
    from gapt_ds.config import GaptConfig, load_json

    cfg = load_json(args.deepspeed_config) if args.deepspeed_config else copy.deepcopy(DS_CONFIG)
    cfg.setdefault("gapt", {})["algorithm"] = args.arm
    GaptConfig.from_ds_config(cfg, source=args.deepspeed_config or "the forgetting recipe")
    cfg["tensorboard"] = {"enabled": True, "output_path": str(Path(args.run_dir)), "job_name": "tensorboard"}
    return cfg


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    cfg = resolve_ds_config(args)
    with runtime.process_group(master_port=MASTER_PORT):
        runtime.write_run_meta(Path(args.run_dir), cfg, {**vars(args), "recipe": "forgetting"})
        return _run(args, cfg)


def _run(args: argparse.Namespace, cfg: dict) -> dict:
    """The MLP in a GAPT engine, trained and evaluated (``_train_and_evaluate``), then released."""
    import gapt_ds

    torch.manual_seed(args.seed)
    model, tasks = MLP(), Tasks(args.seed)
    engine, *_ = gapt_ds.initialize(model=model, model_parameters=model.parameters(), config=cfg,
                                    mbe_modules=[model.act])
    try:
        return _train_and_evaluate(args, engine, model, tasks)
    finally:
        engine.destroy()  # before the process groups go: see GaptEngineMixin.destroy


def _train_and_evaluate(args: argparse.Namespace, engine, model: MLP, tasks: Tasks) -> dict:
    from gapt_ds.metrics import MetricsWriter, eval_tag

    rank = engine.global_rank
    g = torch.Generator().manual_seed(1000 + args.seed * 100 + rank)
    held_out = {t: tasks.sample(t, 2000, torch.Generator().manual_seed(7 + args.seed)) for t in "AB"}
    batch = engine.train_micro_batch_size_per_gpu()

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            return {f"l1_{t}": float(model(*held_out[t])) for t in "AB"}

    after_a: dict[str, float] = {}
    for task in "AB":
        for _ in range(args.steps_per_task):
            x, y = tasks.sample(task, batch, g)
            loss = engine(x.to(engine.device), y.to(engine.device))
            engine.backward(loss)
            engine.step()
        if task == "A":
            after_a = evaluate()
    final = evaluate()
    with torch.no_grad():
        sep = separation(model.hidden(held_out["A"][0]), model.hidden(held_out["B"][0]))
    summary = {"step": engine.global_steps, **final, "l1_A_after_A": after_a["l1_A"],
               "forgetting": final["l1_A"] - after_a["l1_A"], "separation": sep,
               "phase_switches": engine.gate.switches if engine.gate else 0}
    if rank == 0:
        (Path(args.run_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    MetricsWriter(engine.monitor, rank).scalars({eval_tag(k): v for k, v in summary.items()}, engine.global_steps)
    return summary


if __name__ == "__main__":
    runtime.run_entry(lambda: runtime.run_main("gapt-ds recipe forgetting", main))
