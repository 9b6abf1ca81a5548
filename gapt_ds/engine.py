"""The GAPT engine: a real DeepSpeed engine that adds phase-weighted MBE to the loss.

Swap one call in an existing DeepSpeed loop and add a ``"gapt"`` block to the JSON:

    engine, optimizer, _, scheduler = gapt_ds.initialize(model=model, model_parameters=model.parameters(),
                                                         config="ds_config.json")
    for batch in loader:
        loss = engine(input_ids=batch, labels=batch).loss   # CE + w·MBE in compression, CE otherwise
        engine.backward(loss)
        engine.step()                                       # the gate moves once per optimizer step

The returned object *is* the DeepSpeed engine (its class is a subclass of DeepSpeed's, made at
``gapt_ds.initialize``), so ``backward``, gradient accumulation, ZeRO 0-3, bf16/fp16, ``monitor`` and
checkpoints behave as in DeepSpeed. Per micro-batch: ``engine.last_micro`` (CE, MBE per layer, loss);
per optimizer step: ``engine.last_step`` (all-reduced means, phase, skipped).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import deepspeed
import torch
from deepspeed.utils import logger
from torch import nn

from gapt_ds import distributed
from gapt_ds.algorithms import Algorithm, build_algorithm
from gapt_ds.alignment import AlignmentMonitor
from gapt_ds.config import GaptConfig
from gapt_ds.deepspeed_compat import (
    announce_op_builds,
    autocast,
    clear_zero3_param_state,
    close_tensorboard,
    default_cuda_arch_list,
    on_cpu,
    parsed_config,
    remove_module_hooks,
    skip_cpu_shm_build,
    tensorboard_writer,
)
from gapt_ds.hooks import MBECapture, find_blocks, select_layers
from gapt_ds.metrics import MetricsWriter, custom_scalars_layout, step_scalars
from gapt_ds.skip import forced_overflow, grad_norm
from gapt_ds.timeouts import collective_context

STATE_KEY = "gapt"  # key of gapt-ds's state inside DeepSpeed's client_state


@dataclass
class MicroBatchStats:
    """One micro-batch on this rank (detached tensors; no host sync). In evaluation ``mbe`` is empty
    when the sequences are shorter than one window."""

    ce: torch.Tensor
    mbe: list[torch.Tensor]
    loss: torch.Tensor
    phase: int


@dataclass
class StepStats:
    """One optimizer step: CE and per-layer MBE averaged over its micro-batches and all ranks."""

    step: int
    ce: float
    mbe: list[float]
    phase: int  # the phase these micro-batches trained in
    next_phase: int
    skipped: bool  # no update was applied (gapt-ds's non-finite check or DeepSpeed's own skip)
    alignment: dict[str, float] = field(default_factory=dict)  # cos(∇CE, ∇MBE) when measured this step
    mbe_weights: list[float] = field(default_factory=list)  # weight of each layer's MBE in the loss, as applied
    stop: bool = False  # some rank called ``request_stop()`` before this step's all-reduce

    @property
    def mbe_mean(self) -> float:
        return sum(self.mbe) / len(self.mbe)


class GaptEngineMixin:
    """What gapt-ds adds to a DeepSpeed engine: a mixin placed in front of the concrete DeepSpeed engine
    class of an initialized engine (see ``initialize_engine``)."""

    # -- set-up ---------------------------------------------------------------------------------
    def _gapt_setup(self, cfg: GaptConfig, algorithm: Algorithm, blocks: list[nn.Module], layer_ids: list[int],
                    monitor: Any = None):
        self.gapt_config = cfg
        self.algorithm = algorithm
        self.mbe_layer_ids = layer_ids
        self._dp_group = self.data_parallel_group
        self._mbe = MBECapture([blocks[i] for i in layer_ids], cfg.patch_size, cfg.patch_tail, cfg.mbe_mode,
                               group=self._dp_group)
        self._alignment = AlignmentMonitor(self.module, blocks, self._dp_group) if cfg.alignment_every else None
        self._pending_alignment: dict[str, float] = {}
        self.last_micro: Optional[MicroBatchStats] = None
        self.last_step: Optional[StepStats] = None
        self.gapt_skipped_steps = 0  # every skipped optimizer step, whoever skipped it
        self.gapt_consecutive_skips = 0
        self._stop_requested = False
        self._warned_uneven = False
        self._metrics = MetricsWriter(self.monitor if monitor is None else monitor, self.global_rank)
        writer = tensorboard_writer(self) if monitor is None and self._metrics.monitor is not None else None
        if writer is not None:
            writer.add_custom_scalars(custom_scalars_layout())  # the "GAPT" view of the Custom Scalars tab
        self._reset_accumulators()

    def _reset_accumulators(self) -> None:
        self._acc: Optional[torch.Tensor] = None  # [ce_sum, mbe_sum per layer] on the device, no sync
        self._acc_micro = 0
        self._acc_windows = 0
        self._acc_weights = [0.0] * len(self.mbe_layer_ids)  # Σ over micro-batches of the applied weights
        self._acc_phase = self.algorithm.phase

    @property
    def phase(self) -> int:
        """Current phase: 1 memorize, 2 compress (identical on every rank)."""
        return self.algorithm.phase

    @property
    def gate(self):
        """The ``PhaseGate`` of the ``gapt`` algorithm (None for algorithms without one)."""
        return getattr(self.algorithm, "gate", None)

    # -- micro-batch ------------------------------------------------------------------------------
    def forward(self, *inputs, **kwargs):
        """Model forward; the output's loss becomes the algorithm's loss (CE + Σ w_l·MBE_l)."""
        training = self.module.training and torch.is_grad_enabled()
        if training and self._alignment is not None and self._acc is None \
                and self.global_steps % self.gapt_config.alignment_every == 0:
            self._pending_alignment = self._alignment.measure(lambda: self._measurement_losses(inputs, kwargs),
                                                              one_forward=self._alignment_one_forward())
        weights = self.algorithm.layer_weights(len(self.mbe_layer_ids)) if training else [0.0] * len(self.mbe_layer_ids)
        with self._mbe.capture(weights, strict=training) as layers:
            out = super().forward(*inputs, **kwargs)
        missing = [self.mbe_layer_ids[i] for i, r in enumerate(layers) if r is None]
        assert not (training and missing), f"forward did not run blocks {missing}: their hooks saw no output"
        ce = _task_loss(out)
        mbe = [r.value for r in layers if r is not None]
        loss = self.algorithm.loss(ce, mbe, weights) if training else ce
        self.last_micro = MicroBatchStats(ce.detach(), [m.detach() for m in mbe], loss.detach(), self.phase)
        if training:
            self._accumulate(ce.detach(), layers, weights)
        return _with_loss(out, loss)

    def _alignment_one_forward(self) -> bool:
        """Whether the alignment monitor may back-propagate CE and MBE through one forward (retaining its graph).
        Not under ZeRO-3 (one forward, one backward), nor for a compiled module: a compiled backward may donate
        its buffers, and then refuses ``retain_graph`` (whether it does depends on inductor's cache)."""
        return self.zero_optimization_stage() < 3 and not self.is_compiled

    def _measurement_losses(self, inputs, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """A forward for the alignment monitor: (CE, mean MBE of the selected layers), both with graphs.
        It calls the module itself (under DeepSpeed's autocast, if configured): DeepSpeed's forward would
        hook the output for ``engine.backward`` and refuse ``autograd.grad``."""
        with self._mbe.capture([1.0] * len(self.mbe_layer_ids)) as layers, autocast(self):
            out = self.module(*inputs, **kwargs)
        return _task_loss(out), torch.stack([r.value for r in layers]).mean()

    def _accumulate(self, ce: torch.Tensor, layers, weights: list[float]) -> None:
        row = torch.stack([ce.float(), *[r.local_sum.float() for r in layers]])
        self._acc = row if self._acc is None else self._acc + row
        self._acc_micro += 1
        self._acc_windows += layers[0].count
        self._acc_weights = [a + w for a, w in zip(self._acc_weights, weights)]

    # -- optimizer step ---------------------------------------------------------------------------
    def step(self, lr_kwargs=None):
        """DeepSpeed's step; at the accumulation boundary also one all-reduce of the step's statistics,
        a rank-consistent skip if any is non-finite, the algorithm's update and TensorBoard logging.
        A step DeepSpeed skips itself (non-finite gradients, fp16 overflow) counts as skipped too."""
        if not self.is_gradient_accumulation_boundary() or self._acc is None:
            return super().step(lr_kwargs)
        norm = grad_norm(self.module.parameters()) if self._own_grad_check() else None
        bad_grads = ~norm.isfinite() if norm is not None else False
        ce, mbe, (bad_grads, stop) = self._reduce_step_stats([bad_grads, self._stop_requested])
        stats_finite = math.isfinite(ce) and all(math.isfinite(m) for m in mbe)
        finite = stats_finite and bad_grads == 0
        # DeepSpeed computes no gradient norm here; the averaged gradients are whole on every rank
        own_norm = norm.item() if finite and norm is not None and self._metrics.monitor is not None else None
        ds_skipped = self.skipped_steps
        if finite:
            super().step(lr_kwargs)
        else:  # DeepSpeed would apply it (or has no gradient check here): skip through its overflow path
            with forced_overflow(self.optimizer):
                super().step(lr_kwargs)
        skipped = self.skipped_steps != ds_skipped or not finite  # DeepSpeed's overflow decision is all-reduced
        logs = {} if skipped else self.algorithm.on_step(ce, mbe)
        if skipped:
            self.gapt_skipped_steps += 1
            self.gapt_consecutive_skips += 1
            if self.global_rank == 0:
                why = f"non-finite CE ({ce}) or MBE ({mbe})" if not stats_finite else \
                    "non-finite gradients (or fp16 loss-scale overflow)"
                logger.warning(f"gapt-ds: {why} on some rank at step {self.global_steps}: optimizer step skipped "
                               "on every rank; the algorithm state did not advance")
        else:
            self.gapt_consecutive_skips = 0
        self.last_step = StepStats(self.global_steps, ce, mbe, self._acc_phase, self.phase, skipped,
                                   self._pending_alignment, [w / self._acc_micro for w in self._acc_weights],
                                   stop=stop > 0)
        self._pending_alignment = {}
        self._write_events(self.last_step, logs, own_norm)
        self._reset_accumulators()

    def request_stop(self) -> None:
        """Ask every rank to stop: the next step's all-reduce carries the request and ``last_step.stop``
        becomes true on every rank after that same step (safe to call from a signal handler)."""
        self._stop_requested = True

    def _own_grad_check(self) -> bool:
        """Whether gapt-ds must check gradients itself: DeepSpeed checks under ZeRO 1-3 and in its
        fp16/bf16 wrappers, but a plain optimizer (ZeRO-0 fp32) would apply a non-finite gradient. There
        DeepSpeed also logs no gradient norm, so the same norm is logged."""
        return self.zero_optimization_stage() == 0 and not (self.bfloat16_enabled() or self.fp16_enabled())

    def _reduce_step_stats(self, flags: Sequence = ()) -> tuple[float, list[float], list[float]]:
        """One SUM all-reduce over data-parallel ranks of [Σce, Σmbe_l, #micro, #windows, #windows², *flags]:
        the step's means, and each flag summed over ranks (riding on the same collective)."""
        device = self._acc.device
        counts = torch.tensor([self._acc_micro, self._acc_windows, self._acc_windows**2],
                              dtype=torch.float64, device=device)  # float64: exact counts
        flags = [torch.as_tensor(f, dtype=torch.float64, device=device).reshape(1) for f in flags]  # no host sync
        with collective_context("step-statistics all-reduce", self.global_steps + 1):
            packed = torch.cat([self._acc.double(), counts, *flags])
            packed = distributed.all_reduce_sum(packed, self._dp_group).tolist()
        n_layers = len(self.mbe_layer_ids)
        ce_sum, mbe_sums = packed[0], packed[1 : 1 + n_layers]
        micro, windows, windows_sq = packed[1 + n_layers : 4 + n_layers]
        world = distributed.world_size(self._dp_group)
        if not self._warned_uneven and abs(world * windows_sq - windows**2) > 0.5 and self.global_rank == 0:
            self._warned_uneven = True  # the patch-MBE gradient then weights ranks equally, not by windows
            logger.warning("gapt-ds: ranks measured different numbers of MBE windows this step; "
                           "use equal micro-batch shapes on every rank for the exact sharded gradient")
        return ce_sum / micro, [s / windows for s in mbe_sums], packed[4 + n_layers :]

    def _write_events(self, stats: StepStats, extra: dict[str, float], own_norm: Optional[float]) -> None:
        if self._metrics.monitor is None:
            return
        grad_norm = self.get_global_grad_norm()
        scalars = step_scalars(stats, self.mbe_layer_ids, self.get_lr()[0], self.gapt_skipped_steps,
                               own_norm if grad_norm is None else grad_norm, extra)
        self._metrics.scalars(scalars, stats.step)

    # -- teardown ---------------------------------------------------------------------------------
    def destroy(self) -> None:
        """Release everything that keeps the engine (and with it the process groups) alive: gapt-ds's
        forward hooks, the TensorBoard writer (flushed, its thread joined) and DeepSpeed's own hooks.

        Call it before ``torch.distributed.destroy_process_group``: DeepSpeed's autograd hooks are held by
        C++ and form cycles Python's GC cannot break, so a forgotten engine keeps its gloo/NCCL groups,
        and their threads, running into interpreter shutdown (a worker then aborts with
        ``terminate called without an active exception``).
        """
        self._mbe.remove()
        close_tensorboard(self)
        zero3_params = list(self.module.parameters()) if self.zero_optimization_stage() == 3 else []
        super().destroy()
        remove_module_hooks(self)  # DeepSpeed's own forward hooks on the module reference the engine
        clear_zero3_param_state(zero3_params)

    # -- checkpoints ------------------------------------------------------------------------------
    def gapt_state_dict(self) -> dict:
        return {"algorithm": self.algorithm.name, "layers": self.mbe_layer_ids,
                "skipped_steps": self.gapt_skipped_steps, "consecutive_skips": self.gapt_consecutive_skips,
                "state": self.algorithm.state_dict()}

    def load_gapt_state_dict(self, state: dict) -> None:
        if state.get("algorithm") != self.algorithm.name:
            raise ValueError(f"checkpoint was trained with algorithm {state.get('algorithm')!r}, "
                             f"the config selects {self.algorithm.name!r}")
        if state.get("layers") != self.mbe_layer_ids:
            raise ValueError(f"checkpoint measured MBE on layers {state.get('layers')}, "
                             f"the config selects {self.mbe_layer_ids}")
        self.algorithm.load_state_dict(state["state"])
        self.gapt_skipped_steps = int(state.get("skipped_steps", 0))
        self.gapt_consecutive_skips = int(state.get("consecutive_skips", 0))
        self._reset_accumulators()

    def save_checkpoint(self, save_dir, tag=None, client_state=None, save_latest=True, **kwargs):
        """DeepSpeed's save, with the algorithm state (gate, phase) added to ``client_state``."""
        state = dict(client_state or {})
        state[STATE_KEY] = self.gapt_state_dict()
        return super().save_checkpoint(save_dir, tag=tag, client_state=state, save_latest=save_latest, **kwargs)

    def load_checkpoint(self, load_dir, tag=None, **kwargs):
        """DeepSpeed's load; restores the algorithm state. Returns ``(path, client_state)`` as DeepSpeed,
        without gapt-ds's own entry."""
        path, client_state = super().load_checkpoint(load_dir, tag, **kwargs)
        if path is not None and client_state is not None and STATE_KEY in client_state:
            self.load_gapt_state_dict(client_state.pop(STATE_KEY))
        elif path is not None and not kwargs.get("load_module_only"):
            logger.warning(f"gapt-ds: {path} has no gapt state; the algorithm starts fresh")
        return path, client_state


def _task_loss(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        loss = out
    elif isinstance(out, dict) or hasattr(out, "loss"):
        loss = out.get("loss") if isinstance(out, dict) else out.loss
    else:
        loss = None
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError("gapt-ds needs the model's training loss: call the engine with labels=... "
                         "(Hugging Face models) or return a scalar loss tensor from forward")
    return loss


def _with_loss(out: Any, loss: torch.Tensor) -> Any:
    if isinstance(out, torch.Tensor):
        return loss
    if isinstance(out, dict):  # includes transformers' ModelOutput
        out["loss"] = loss
    if hasattr(out, "loss"):
        out.loss = loss
    return out


_ENGINE_CLASSES: dict[type, type] = {}


def _gapt_class(base: type) -> type:
    if base.__name__ == "PipelineEngine":
        raise ValueError("gapt-ds does not support DeepSpeed's PipelineEngine (pipeline parallelism) yet")
    if base not in _ENGINE_CLASSES:
        _ENGINE_CLASSES[base] = type(f"Gapt{base.__name__}", (GaptEngineMixin, base),
                                      {"__doc__": GaptEngineMixin.__doc__})
    return _ENGINE_CLASSES[base]


def _config_source(args: Any, config: Any, config_params: Any) -> Any:
    for candidate in (config, config_params, getattr(args, "deepspeed_config", None)):
        if candidate is not None:
            return candidate
    return None


def initialize_engine(args=None, model: Optional[nn.Module] = None, optimizer=None, model_parameters=None,
                      training_data=None, lr_scheduler=None, distributed_port: Optional[int] = None, mpu=None,
                      dist_init_required: Optional[bool] = None, collate_fn=None, config=None, mesh_param=None,
                      config_params=None, *, mbe_modules: Optional[Sequence[nn.Module]] = None):
    """What ``gapt_ds.initialize`` runs (call it through that name): ``deepspeed.initialize`` with GAPT: same
    arguments and return tuple
    ``(engine, optimizer, training_dataloader, lr_scheduler)``.

    The ``"gapt"`` block of the DeepSpeed config is validated before DeepSpeed starts (absent: the
    defaults of ``GaptConfig``). MBE is measured on the outputs of ``mbe_modules`` if given, else on
    the model's transformer blocks (``transformer.h`` for GPT-2) chosen by ``"layers"``.
    """
    if model is None:
        raise ValueError("gapt_ds.initialize needs model=...")
    source = _config_source(args, config, config_params)
    cfg = GaptConfig.from_ds_config(source) if source is not None else None
    blocks = list(mbe_modules) if mbe_modules is not None else find_blocks(model)
    layer_ids = select_layers(len(blocks), cfg.layers) if cfg is not None else None
    algorithm = build_algorithm(cfg) if cfg is not None else None  # an unknown name fails before DeepSpeed starts
    kwargs = dict(args=args, model=model, optimizer=optimizer, model_parameters=model_parameters,
                  training_data=training_data, lr_scheduler=lr_scheduler, mpu=mpu,
                  dist_init_required=dist_init_required, collate_fn=collate_fn, config=config,
                  mesh_param=mesh_param, config_params=config_params)
    if distributed_port is not None:
        kwargs["distributed_port"] = distributed_port
    if on_cpu():
        skip_cpu_shm_build()  # as gapt-ds train: the op serves only inference all-reduce
    else:
        default_cuda_arch_list()  # as gapt-ds train: DeepSpeed's JIT builds fail on Hopper torch builds without it
    with announce_op_builds(_say_op_build):
        engine, ds_optimizer, loader, scheduler = deepspeed.initialize(**kwargs)
    if cfg is None:  # e.g. a config DeepSpeed found by itself: read the block from the parsed dict
        cfg = GaptConfig.from_ds_config(parsed_config(engine))
        layer_ids = select_layers(len(blocks), cfg.layers)
        algorithm = build_algorithm(cfg)
    attach_gapt(engine, cfg, blocks, algorithm, layer_ids)
    if not engine.monitor.enabled:
        _warn_no_tensorboard(engine.global_rank)
    return engine, ds_optimizer, loader, scheduler


def _say_op_build(name: str) -> None:
    if distributed.rank() == 0:
        print(f"gapt-ds: DeepSpeed is loading its {name} op: the first JIT build on a machine takes minutes "
              "(on CPU, \"torch_adam\": true in the optimizer params avoids fused Adam)", file=sys.stderr, flush=True)


_warned_no_tensorboard = False


def _warn_no_tensorboard(rank: int) -> None:
    global _warned_no_tensorboard
    if rank == 0 and not _warned_no_tensorboard:
        _warned_no_tensorboard = True
        logger.warning('gapt-ds: the DeepSpeed config has no enabled "tensorboard" block, so no gapt/* metric is '
                       'written (engine.last_step still has them); add "tensorboard": {"enabled": true, '
                       '"output_path": "runs/", "job_name": "gapt"} to log them')


def attach_gapt(engine: Any, cfg: GaptConfig, blocks: Sequence[nn.Module], algorithm: Optional[Algorithm] = None,
                layer_ids: Optional[list[int]] = None, monitor: Any = None) -> Any:
    """Make an initialized DeepSpeed ``engine`` a GAPT engine in place (its class gets ``GaptEngineMixin``
    in front) and return it: what ``initialize`` and the Hugging Face Trainer integration both do.
    ``monitor``: where step metrics go (anything with ``enabled`` and ``write_events``; default: the
    engine's DeepSpeed monitor)."""
    if layer_ids is None:
        layer_ids = select_layers(len(blocks), cfg.layers)
    engine.__class__ = _gapt_class(type(engine))
    engine._gapt_setup(cfg, algorithm or build_algorithm(cfg), list(blocks), layer_ids, monitor)
    return engine
