"""A small training job for the trainer tests, run as its own process (also under torchrun).

usage: python trainer_job.py DATA_DIR RUN_DIR MAX_STEPS SAVE_EVERY NOISE STEP_SLEEP LR [DROPOUT [DIE_AT_STEP]]
The objective predicts the next fbank frame with a linear layer (L1 over valid
frames); NOISE > 0 perturbs its input with the trainer's generator and DROPOUT > 0
drops input features with the global RNG (as nn.Dropout in a model does), so a
resumed run only matches if both RNG states are restored. DIE_AT_STEP > 0: the
process SIGKILLs itself as it starts that step (every rank at the same point).
"""

import os
import signal
import sys
import time

import torch
from torch import nn

from speechssl import features
from speechssl.data.dataset import AudioDataset, collate_batch
from speechssl.interface import lengths_to_mask
from speechssl.trainer import Trainer, TrainerConfig


class NextFrame(nn.Module):
    def __init__(self, noise: float, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(40, 40)
        self.noise = noise
        self.dropout = nn.Dropout(dropout)

    def forward(self, wavs, wav_lens, generator=None):
        x, lengths = features.fbank(wavs, wav_lens, 40)
        x = features.cmvn(x, lengths)  # (B, T, 40)
        inputs = x[:, :-1]
        if self.noise:
            inputs = inputs + self.noise * torch.randn(inputs.shape, generator=generator, device=inputs.device)
        inputs = self.dropout(inputs)
        mask = lengths_to_mask(lengths - 1, inputs.shape[1])
        err = (self.proj(inputs) - x[:, 1:]).abs().mean(-1)
        loss = (err * mask).sum() / mask.sum()
        return loss, {"frames": mask.sum().float()}


def main(data, run_dir, max_steps, save_every, noise, step_sleep, lr, dropout="0", die_at_step="0"):
    torch.manual_seed(0)
    cfg = TrainerConfig(
        max_steps=int(max_steps), save_every=int(save_every), log_every=5, lr=float(lr), warmup_steps=5,
        batch_seconds=2.0, max_seconds=None, keep=2,
    )
    model = NextFrame(float(noise), float(dropout))
    trainer = Trainer(model, cfg, run_dir, loss_fn=lambda *args: loss_fn(*args))

    def loss_fn(model, batch, generator):
        time.sleep(float(step_sleep))  # lets a test kill the process mid-run
        if trainer.step + 1 == int(die_at_step):
            os.kill(os.getpid(), signal.SIGKILL)
        return model(batch["wavs"], batch["wav_lens"], generator=generator)

    trainer.fit(AudioDataset.from_folder(data), collate_batch)


if __name__ == "__main__":
    main(*sys.argv[1:])
