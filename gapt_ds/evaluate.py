"""Evaluation during ``gapt-ds train``: validation CE and MBE on the held-out split, and for the
arithmetic task the answer-only CE and exact match on in-distribution (ID) and out-of-distribution
(OOD) problems. Every rank evaluates its shard; sums are all-reduced, so every rank gets the result."""

from __future__ import annotations

from typing import Optional

import torch

from gapt_ds.data.arithmetic import Task, answer_batch, answer_metrics, eval_examples
from gapt_ds.data.batches import eval_batches
from gapt_ds.distributed import all_reduce_sum

ARITH_BATCH = 64  # problems per forward in the arithmetic evaluation


class Evaluator:
    """``run()`` returns ``{"val_ce", "val_mbe"}`` (when the validation split fills one micro-batch on
    every rank) plus ``{id,ood}_answer_ce`` and ``{id,ood}_exact_match`` when ``arith_problems`` > 0."""

    def __init__(self, engine, val_tokens, tokenizer, seq_len: int, max_batches: int, arith_problems: int,
                 seed: int, rank: int, world: int, task: Optional[Task] = None) -> None:
        self.engine, self.val_tokens, self.tok = engine, val_tokens, tokenizer
        self.seq_len, self.max_batches, self.arith_problems, self.seed = seq_len, max_batches, arith_problems, seed
        self.rank, self.world = rank, world
        self.task = task or Task()  # digit ranges and answer order of the arithmetic sets

    def _sum(self, sums: list[float]) -> list[float]:
        return all_reduce_sum(torch.tensor(sums, dtype=torch.float64, device=self.engine.device)).tolist()

    @torch.no_grad()
    def run(self) -> dict[str, float]:
        self.engine.eval()
        try:
            result = self._validation()
            if self.arith_problems:
                result.update(self._arithmetic())
        finally:
            self.engine.train()
        return result

    def _validation(self) -> dict[str, float]:
        engine = self.engine
        ce = mbe = 0.0
        n = 0
        for x in eval_batches(self.val_tokens, self.seq_len, engine.train_micro_batch_size_per_gpu(),
                              self.rank, self.world, self.max_batches):
            engine(input_ids=x.to(engine.device), labels=x.to(engine.device))
            ce += engine.last_micro.ce.item()
            mbe += sum(m.item() for m in engine.last_micro.mbe) / max(1, len(engine.last_micro.mbe))
            n += 1
        ce, mbe, n = self._sum([ce, mbe, n])
        return {"val_ce": ce / n, "val_mbe": mbe / n} if n else {}

    def _arithmetic(self) -> dict[str, float]:
        out = {}
        per_rank = self.arith_problems // self.world
        for name, digits in self.task.eval_sets.items():
            examples = eval_examples(digits, per_rank * self.world, seed=self.seed,
                                     reverse=self.task.reverse, pad=self.task.pad)[self.rank :: self.world]
            sums = [0.0, 0.0, 0.0]
            for i in range(0, len(examples), ARITH_BATCH):
                inputs, labels = answer_batch(examples[i : i + ARITH_BATCH], self.tok)
                logits = self.engine(input_ids=inputs.to(self.engine.device),
                                     labels=labels.to(self.engine.device)).logits
                for j, v in enumerate(answer_metrics(logits, labels.to(logits.device))):
                    sums[j] += float(v)
            ce_sum, count, exact = self._sum(sums)
            out[f"{name}_answer_ce"] = ce_sum / max(count, 1)
            out[f"{name}_exact_match"] = exact / max(per_rank * self.world, 1)
        return out
