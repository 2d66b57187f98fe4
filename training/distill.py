"""Knowledge distillation: a frozen teacher (one checkpoint, or the mean of several) gives soft
targets that the student matches beside the labels (Hinton et al. 2015).

``loss = (1 - w) * CE(student, labels) + w * T^2 * KL(p_teacher^T || p_student^T)``, where
``p^T = softmax(logits / T)`` and the teacher probability is the mean over its checkpoints.

Two modes (``TrainConfig.distill_mode``):

* ``online``: the teacher sees exactly the student's (augmented, mixed) batch, so every view gets
  its own target; it costs one teacher forward pass per step.
* ``offline``: the teacher's probabilities for each training clip (the whole clip, no augmentation,
  as the teachers are evaluated) are computed once; a view takes its clip's target, and mixup or
  between-class mixing mixes the targets as it mixes the labels (same ``lam``, same ratio and partner).
  Free per step, so an ensemble teacher costs no more than a single one.

A teacher must not have seen the student's held-out data: :func:`training.provenance.check_lineage`
refuses a teacher that trained on the student's validation or test clips, or selected its epoch
on the test clips, and so does it for the teacher's own teachers and pretrained encoders,
recursively (by clip names where recorded, else ESC-50 folds; for folder datasets without clip
lists the split settings must be identical); teachers whose classes or features differ are
refused too. Teachers normalised with other statistics get their inputs
re-normalised.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

def check_teacher_split(teacher: dict, student: dict, name: str) -> None:
    """Raise ``ValueError`` unless the teacher (dataset description ``teacher``) trained only on the
    student's training data and selected its epoch on training or validation data, never on test
    (:func:`training.provenance.check_split`; by clip names where both record them)."""
    from training.provenance import check_split
    check_split(teacher, student, name, "teacher")


class Teacher(nn.Module):
    """Frozen ensemble of checkpoints -> mean soft targets ``[B, classes]`` at temperature ``T``."""

    def __init__(self, models: Sequence[nn.Module], norms: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
                 temperature: float = 2.0, names: Sequence[str] = ()):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        self.members = nn.ModuleList(models)
        self.clip_probs: torch.Tensor | None = None   # [clips, classes] in offline mode
        self.temperature = float(temperature)
        self.names = list(names)
        for i, nm in enumerate(norms):
            # (scale, shift) mapping the student's normalised input to this teacher's normalisation
            scale, shift = nm if nm is not None else (torch.ones(1), torch.zeros(1))
            self.register_buffer(f"scale{i}", scale, persistent=False)
            self.register_buffer(f"shift{i}", shift, persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)        # always frozen: BatchNorm statistics and dropout stay off

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = 0.0
        for i, m in enumerate(self.members):
            xi = x * getattr(self, f"scale{i}") + getattr(self, f"shift{i}")
            probs = probs + torch.softmax(m(xi).float() / self.temperature, -1)
        return probs / len(self.members)

    @torch.no_grad()
    def precompute(self, train_ds, batch_size: int = 128, device="cpu") -> torch.Tensor:
        """Offline mode: cache this teacher's probabilities for every clip of ``train_ds`` (the
        whole un-augmented clip, also when the student trains on crops) as ``clip_probs``."""
        view = train_ds.subset(range(train_ds.num_clips), augment=False, expansion=1)
        view.crop_frames = None
        out = []
        for s in range(0, view.num_clips, batch_size):
            x, _ = view.get_batch(torch.arange(s, min(s + batch_size, view.num_clips)))
            out.append(self(x.to(device)).cpu())
        self.clip_probs = torch.cat(out)
        return self.clip_probs

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], train_ds, dataset: dict,
                         temperature: float = 2.0) -> "Teacher":
        """Load ``paths`` (safetensors checkpoints) as a teacher for a student trained on
        ``train_ds`` (normalisation already set) with dataset description ``dataset``."""
        from training.checkpoint import build_from_checkpoint
        from training.provenance import check_lineage

        if train_ds.normalization is None:
            raise ValueError("set the student's normalisation before building its teacher")
        s_mean, s_std = (torch.as_tensor(t, dtype=torch.float32) for t in train_ds.normalization)
        members, norms = [], []
        for p in paths:
            model, meta = build_from_checkpoint(p)
            name = Path(p).name
            check_lineage(meta, dataset, name, "teacher")   # the teacher and, recursively, its sources
            if list(meta.get("class_names") or []) != list(train_ds.class_names):
                raise ValueError(f"teacher {name} has other classes than the student")
            if meta.get("feature_config") != train_ds.feature_cfg.to_dict():
                raise ValueError(f"teacher {name} uses other features than the student")
            t_norm = meta.get("normalization")
            if t_norm is None:
                norms.append(None)
            else:
                t_mean = torch.as_tensor(t_norm["mean"], dtype=torch.float32)
                t_std = torch.as_tensor(t_norm["std"], dtype=torch.float32)
                # x_t = (x_s * s_std + s_mean - t_mean) / t_std
                norms.append((s_std / t_std, (s_mean - t_mean) / t_std))
            members.append(model)
        if not members:
            raise ValueError("distillation needs at least one teacher checkpoint")
        return cls(members, norms, temperature, [str(p) for p in paths])


def distill_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(teacher || student)`` at temperature ``T``, averaged over the batch."""
    log_p = F.log_softmax(student_logits.float() / temperature, -1)
    return F.kl_div(log_p, teacher_probs, reduction="batchmean") * temperature ** 2
