"""A small training job for the trainer tests, run as its own process (also under torchrun).

usage: python trainer_job.py DATA_DIR RUN_DIR MAX_STEPS SAVE_EVERY NOISE STEP_SLEEP LR [DROPOUT [DIE_AT_STEP
       [CROP_SECONDS [WORKERS]]]]
The objective predicts the next fbank frame with a linear layer (L1 over valid
frames); NOISE > 0 perturbs its input with the trainer's generator and DROPOUT > 0
drops input features with the global RNG (as nn.Dropout in a model does), so a
resumed run only matches if both RNG states are restored. DIE_AT_STEP > 0: the
process SIGKILLs itself as it starts that step (every rank at the same point).
CROP_SECONDS > 0 cuts each clip to that length at a random frame (``crop=random``);
WORKERS > 0 loads batches in that many DataLoader processes.
"""

import os
import signal
import sys
import time

import torch
from torch import nn

from speechssl import features
from speechssl.data.dataset import AudioDataset, FrameRule, replace_dataset
from speechssl.frames import frames_snip_edges
from speechssl.interface import lengths_to_mask
from speechssl.objective import collate_items
from speechssl.trainer import Trainer, TrainerConfig


class NextFrame(nn.Module):
    def __init__(self, noise: float, dropout: float, step_sleep: float, die_at_step: int) -> None:
        super().__init__()
        self.proj = nn.Linear(40, 40)
        self.noise = noise
        self.dropout = nn.Dropout(dropout)
        self.step_sleep, self.die_at_step = step_sleep, die_at_step

    def forward(self, batch, *, step, generator=None):
        time.sleep(self.step_sleep)  # lets a test kill the process mid-run
        if step + 1 == self.die_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        wavs, wav_lens = batch["wavs"], batch["wav_lens"]
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


def main(data, run_dir, max_steps, save_every, noise, step_sleep, lr, dropout="0", die_at_step="0", crop_seconds="0",
         workers="0"):
    torch.manual_seed(0)
    cfg = TrainerConfig(
        max_steps=int(max_steps), save_every=int(save_every), log_every=5, lr=float(lr), warmup_steps=5,
        batch_seconds=2.0, keep=2, num_workers=int(workers),
    )
    dataset = AudioDataset.from_folder(data)
    if float(crop_seconds) > 0:
        rule = FrameRule(features.HOP, lambda n: frames_snip_edges(n, features.WINDOW, features.HOP))
        dataset = replace_dataset(dataset, max_samples=int(16000 * float(crop_seconds)), crop="random", frames=rule)
    model = NextFrame(float(noise), float(dropout), float(step_sleep), int(die_at_step))
    Trainer(model, cfg, run_dir).fit(dataset, collate_items)


if __name__ == "__main__":
    main(*sys.argv[1:])
