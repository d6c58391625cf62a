"""The EMA teacher: a frozen fp32 copy of the student encoder that follows it by exponential moving average.

data2vec 2.0 / EAT / SSLAM: the teacher is a full copy (patch embedding, CLS, pre-trunk norm, blocks), never in the
optimizer, updated after every optimizer step as ``teacher = d * teacher + (1 - d) * student``, with the decay ``d``
annealed linearly from ``start`` to ``end`` over ``anneal_steps`` updates and constant afterwards
(fairseq ``get_annealed_rate``: ``d(n) = end - (end - start) * (1 - n / anneal_steps)``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def ema_decay(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Decay used for update number ``step`` (1-based, as fairseq counts ``num_updates`` after the step)."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return end
    return end - (end - start) * (1.0 - step / anneal_steps)


class EMATeacher(nn.Module):
    def __init__(self, student: nn.Module, start: float = 0.9998, end: float = 0.99999, anneal_steps: int = 100_000):
        super().__init__()
        self.model = copy.deepcopy(student).float()
        self.model.requires_grad_(False)
        self.model.eval()
        self.start, self.end, self.anneal_steps = float(start), float(end), int(anneal_steps)
        self.decay = self.start

    def train(self, mode: bool = True):  # the teacher always runs in eval mode (no drop path)
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> float:
        """One EMA step towards ``student``; returns the decay used."""
        d = ema_decay(step, self.start, self.end, self.anneal_steps)
        self.decay = d
        t_params = [p for p in self.model.parameters()]
        s_params = [p.detach().to(torch.float32) for p in student.parameters()]
        if len(t_params) != len(s_params):
            raise RuntimeError("teacher and student have different parameter lists")
        # teacher <- d * teacher + (1 - d) * student
        torch._foreach_mul_(t_params, d)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - d)
        for tb, sb in zip(self.model.buffers(), student.buffers()):
            tb.copy_(sb)
        return d

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)
