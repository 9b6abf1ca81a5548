"""GAPT in the Hugging Face ``Trainer`` (``pip install gapt-ds[hf]``).

    from gapt_ds.integrations.hf import GaptTrainer

    args = TrainingArguments(..., deepspeed="ds_config.json", report_to="tensorboard")
    trainer = GaptTrainer(model=model, args=args, train_dataset=ds)   # instead of Trainer
    trainer.train()

The DeepSpeed JSON is the one Trainer reads (``"auto"`` values resolved by Trainer as usual); its
``"gapt"`` block is validated when the trainer is built. Trainer's own DeepSpeed engine becomes a GAPT
engine right after accelerate creates it (``gapt_ds.engine.attach_gapt``, the code ``gapt_ds.initialize``
runs), so MBE capture, the algorithm's loss, the per-step all-reduce, the skip rule and the gate are the
same; the ``gapt/*`` step metrics go to the Trainer's TensorBoard writer, and the gate state is saved
and restored with Trainer's checkpoints (DeepSpeed's ``client_state``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import nn
from transformers import Trainer
from transformers.integrations import TensorBoardCallback
from transformers.utils import logging

from gapt_ds.config import GaptConfig
from gapt_ds.deepspeed_compat import on_cpu, skip_cpu_shm_build
from gapt_ds.engine import GaptEngineMixin, attach_gapt
from gapt_ds.hooks import find_blocks, select_layers
from gapt_ds.metrics import custom_scalars_layout

logger = logging.get_logger(__name__)

if on_cpu():  # before TrainingArguments starts DeepSpeed's process group, as gapt_ds.initialize does
    skip_cpu_shm_build()


class TrainerTensorBoard:
    """The engine's metrics sink under Trainer: ``write_events`` goes to the TensorBoard writer of the
    trainer's ``TensorBoardCallback`` (``report_to="tensorboard"``), with the tags unchanged."""

    enabled = True

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._warned = False
        self._laid_out: Any = None

    def _writer(self) -> Any:
        for callback in self.trainer.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                if callback.tb_writer is not self._laid_out:  # once per writer: the "GAPT" custom-scalars view
                    callback.tb_writer.add_custom_scalars(custom_scalars_layout())
                    self._laid_out = callback.tb_writer
                return callback.tb_writer
        return None

    def write_events(self, events: list[tuple[str, float, int]]) -> None:
        writer = self._writer()
        if writer is None:
            if not self._warned:
                self._warned = True
                logger.warning('gapt-ds: no TensorBoard reporting, so no gapt/* metric is written: '
                               'pass TrainingArguments(report_to="tensorboard")')
            return
        for tag, value, step in events:
            writer.add_scalar(tag, value, step)


class GaptTrainer(Trainer):
    """``transformers.Trainer`` training with GAPT under DeepSpeed (``TrainingArguments(deepspeed=...)``).

    ``mbe_modules``: the modules whose outputs MBE is measured on (default: the model's transformer
    blocks, chosen by the block's ``"layers"``). ``trainer.gapt_engine`` is the GAPT engine once training
    has started (``phase``, ``gate``, ``last_step`` as with ``gapt_ds.initialize``).
    """

    def __init__(self, *args, mbe_modules: Optional[Sequence[nn.Module]] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        problems = []
        if not self.is_deepspeed_enabled:
            problems.append('GaptTrainer needs DeepSpeed: TrainingArguments(deepspeed="ds_config.json")')
        if self.args.label_smoothing_factor or self.compute_loss_func is not None:
            problems.append("GaptTrainer adds MBE to the model's own loss: label_smoothing_factor and "
                            "compute_loss_func would replace it")
        if problems:
            raise ValueError("; ".join(problems))
        source = self.args.deepspeed if isinstance(self.args.deepspeed, str) else ""
        self.gapt_config = GaptConfig.from_ds_config(self.args.hf_deepspeed_config.config, source=source)
        self._gapt_blocks = list(mbe_modules) if mbe_modules is not None else find_blocks(self.model)
        self._gapt_layer_ids = select_layers(len(self._gapt_blocks), self.gapt_config.layers)
        # the model's mean CE per micro-batch, as with gapt_ds.initialize (Trainer then divides by the
        # accumulation steps itself), not a sum over tokens normalized across the accumulated batch
        self.model_accepts_loss_kwargs = False
        self.gapt_engine: Optional[GaptEngineMixin] = None

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        prepare = self.accelerator.prepare

        def prepare_with_gapt(*objects, **kwargs):
            prepared = prepare(*objects, **kwargs)
            self._attach_gapt()
            return prepared

        self.accelerator.prepare = prepare_with_gapt

    def _attach_gapt(self) -> None:
        wrapped = getattr(self.accelerator, "deepspeed_engine_wrapped", None)
        engine = getattr(wrapped, "engine", None)
        if engine is None or isinstance(engine, GaptEngineMixin):
            return
        self.gapt_engine = attach_gapt(engine, self.gapt_config, self._gapt_blocks, layer_ids=self._gapt_layer_ids,
                                       monitor=TrainerTensorBoard(self))
