"""`svlm train --config FILE` (or `python -m training.train`): overlapped-chunk SFT.

What it owns: the training loop. Each sample becomes token ids, positions and labels through
training/samples.py (the engine's sequence code); one causal full-attention pass per window
goes through the model's public pieces (vision features placed at the video pads, the decoder
with explicit 3-D positions); the language-model head runs only at the positions whose next
token is a label, so a 152k vocabulary is multiplied out over hundreds of answer tokens rather
than tens of thousands of video tokens (training/lm_head_memory.py measures the difference).

Scaling is accelerate's: the same file runs on one CPU, one GPU, or `accelerate launch` /
`torchrun` over many (DDP, or DeepSpeed ZeRO-3 with training/configs/accelerate_zero3.yaml).
The loss of an optimizer step is the mean over every label token of the global batch (all
processes, all accumulation steps), so a step's gradient does not depend on how the global
batch is split over processes.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from svlm_ros.engine.models import LoadedModel, load_model
from svlm_ros.params import parse_assignments
from svlm_ros.progress import progress

from . import command
from .config import TrainConfig, as_dict, load_train_config
from .dataset import ShardedDataset, split_sources
from .samples import IGNORE, Built, SequenceBuilder

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


# ----- the model's forward for a micro step's windows ---------------------------------------------
class WindowLoss(torch.nn.Module):
    """Summed cross-entropy of the labels of one forward's windows, through the model's public forward.

    Wrapping the model in one module lets DDP and DeepSpeed see a single forward per micro step
    (their gradient hooks and parameter gathering hang on it)."""

    def __init__(self, core: torch.nn.Module, train_vision: bool):
        super().__init__()
        self.core = core
        self.train_vision = train_vision

    def forward(self, windows: Sequence[Dict[str, torch.Tensor]]) -> torch.Tensor:
        """`windows`: `to_inputs` of each (per_device_batch_size of them). Each window is decoded on its
        own (its own causal pass, its own positions); the embedding lookup and the head run once over
        all of them, so the dense gradient of the 152k-row (tied) matrix is made once per forward, not
        once per window: on a small model that gradient is most of a window's backward."""
        core = self.core
        sizes = [len(w["tokens"]) for w in windows]
        embeds = core.get_input_embeddings()(torch.cat([w["tokens"] for w in windows])).split(sizes)
        # The head only where a label follows: hidden state i predicts token i + 1.
        states = [self._decode(e, w["positions"], w.get("pixel_values"), w.get("grid_thw"), w.get("video_slots"))
                  .index_select(0, w["label_index"] - 1) for e, w in zip(embeds, windows)]
        logits = core.get_output_embeddings()(torch.cat(states))
        return F.cross_entropy(logits.float(), torch.cat([w["targets"] for w in windows]), reduction="sum")

    def hidden_states(self, tokens, positions, pixel_values=None, grid_thw=None, video_slots=None):
        """The decoder's final hidden state at every position of one window, the vision features in its
        video pads."""
        return self._decode(self.core.get_input_embeddings()(tokens), positions, pixel_values, grid_thw, video_slots)

    def _decode(self, embeds, positions, pixel_values, grid_thw, video_slots):
        core = self.core
        if pixel_values is not None:
            with torch.set_grad_enabled(self.train_vision and torch.is_grad_enabled()):
                output = core.get_video_features(pixel_values.to(embeds.dtype), grid_thw)
            pooled = output.pooler_output if hasattr(output, "pooler_output") else output
            features = torch.cat(list(pooled), 0) if isinstance(pooled, (list, tuple)) else pooled
            if features.shape[0] != video_slots.shape[0]:
                raise RuntimeError(f"{features.shape[0]} vision features for {video_slots.shape[0]} video pads")
            embeds = embeds.index_copy(0, video_slots, features.to(embeds.dtype))
        return core.get_decoder()(inputs_embeds=embeds[None], position_ids=positions[:, None, :],
                                  use_cache=False).last_hidden_state[0]


def _tied_head_notice(record: logging.LogRecord) -> bool:
    """False for accelerate's warning, at every checkpoint, that it left `lm_head.weight` out. With tied
    embeddings that tensor is the embedding matrix, saved under its own name and tied again on load
    (test_resume_gives_the_same_weights_as_one_run compares every weight); the warning would only
    repeat itself every `save_every` steps."""
    message = record.getMessage()
    return not ("Removed shared tensor" in message and "lm_head.weight" in message)


def to_inputs(built: Built, device: torch.device) -> Dict[str, torch.Tensor]:
    label_index = np.flatnonzero(built.labels != IGNORE)
    inputs = {
        "tokens": torch.from_numpy(built.tokens).to(device),
        "positions": torch.from_numpy(built.positions).to(device),
        "targets": torch.from_numpy(built.labels[label_index]).to(device),
        "label_index": torch.from_numpy(label_index).to(device),
    }
    if built.pixel_values is not None:
        inputs["pixel_values"] = torch.from_numpy(built.pixel_values).to(device)
        inputs["grid_thw"] = torch.from_numpy(built.grid_thw).to(device)
        inputs["video_slots"] = torch.from_numpy(built.video_slots).to(device)
    return inputs


# ----- data ------------------------------------------------------------------------------------
class _BuiltSamples(torch.utils.data.Dataset):
    """The torch dataset of a training pass: sample k of a fixed list, built into model input (in a data-loader worker)."""

    def __init__(self, dataset: ShardedDataset, builder: SequenceBuilder, order: List[int], blank: bool = False):
        self.dataset, self.builder, self.order, self.blank = dataset, builder, order, blank

    def __len__(self):
        return len(self.order)

    def __getitem__(self, k):
        sample = self.dataset[self.order[k]]
        built = self.builder.build(sample.meta, [sample.second_frames(i) for i in range(len(sample.meta["seconds"]))])
        return blanked(built) if self.blank else built


def blanked(built: Built) -> Built:
    """`built` with every pixel value 0 (the normalised mean colour): the video-blind baseline's input.
    Token ids, positions and the vision grid stay, so the model reads the same sequence without the picture."""
    if built.pixel_values is None:
        return built
    return dataclasses.replace(built, pixel_values=np.zeros_like(built.pixel_values))


def _identity(item):
    return item


def _end_with_trainer(trainer_pid: int, worker_id: int) -> None:
    """A data-loader worker is killed when its trainer dies, kill -9 included. torch's own check
    (the worker polls its parent) cannot help then: the worker's queue thread blocks writing a
    sample into the pipe the dead trainer no longer reads, and the worker waits on it at exit."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != trainer_pid:  # the trainer died before prctl took effect
        os._exit(1)


def epoch_steps(epochs: float, samples: int, global_batch: int) -> int:
    """Optimizer steps for `epochs` passes over `samples`, to the nearest whole step: a step's
    global batch is fixed, so the last one is not cut short."""
    wanted = epochs * samples
    if wanted < global_batch:
        raise ValueError(f"epochs {epochs:g} of {samples} training samples is {wanted:g} samples, less than one "
                         f"optimizer step's global batch of {global_batch} (processes x per_device_batch_size x "
                         "gradient_accumulation_steps): lower gradient_accumulation_steps, add data, or set "
                         "max_steps to repeat samples on purpose")
    return max(1, math.floor(wanted / global_batch + 0.5))


def epoch_order(count: int, epoch: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(count)


def global_order(count: int, start: int, stop: int, seed: int) -> List[int]:
    """Positions start..stop-1 of the endless sequence of per-epoch permutations."""
    result, cache = [], {}
    for k in range(start, stop):
        epoch = k // count
        if epoch not in cache:
            cache[epoch] = epoch_order(count, epoch, seed)
        result.append(int(cache[epoch][k % count]))
    return result


def label_count(builder: SequenceBuilder, meta: Dict) -> int:
    """Labels of a sample from its text alone (no frames): words + marker + <|im_end|> per second."""
    marker = len(builder.marker_ids)
    return sum(len(builder.answer_ids(s["text"])) + marker + 1 for s in meta["seconds"])


# ----- the trainer -----------------------------------------------------------------------------
def _mixed_precision(config: TrainConfig, device_type: str) -> str:
    if config.mixed_precision != "auto":
        return config.mixed_precision
    return "bf16" if device_type == "cuda" else "no"


def cosine_with_warmup(optimizer, warmup: int, total: int, floor: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress_ = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = True):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config.validate()
        self.out = Path(config.output_dir)
        requested = config.model.device
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"model.device is {requested!r} but torch finds no CUDA device here (torch "
                             f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); set model.device: "
                             "cpu (or auto) to train on the CPU, or run on a machine with a GPU")
        cpu = requested == "cpu" or not torch.cuda.is_available()
        # A micro step is one forward of per_device_batch_size windows; a process does
        # gradient_accumulation_steps of them per optimizer step.
        self.micro_steps = config.gradient_accumulation_steps
        self.process_batch = config.per_device_batch_size * config.gradient_accumulation_steps
        self.accelerator = Accelerator(cpu=cpu, gradient_accumulation_steps=self.micro_steps,
                                       mixed_precision=_mixed_precision(config, "cpu" if cpu else "cuda"))
        set_seed(config.seed)
        acc = self.accelerator
        self.world = acc.num_processes
        self.dataset = ShardedDataset(config.data)
        if not len(self.dataset):
            raise ValueError(f"{config.data} has no samples; its report.json says what build-dataset skipped and why")
        self._split()
        self.global_batch = self.world * self.process_batch
        if config.max_steps is not None:
            self.total_steps = config.max_steps
        else:
            self.total_steps = epoch_steps(config.epochs, len(self.train_indices), self.global_batch)
        self._load_model()
        self.warmup_steps = int(round(config.warmup_ratio * self.total_steps))
        trained = [(name, p) for name, p in self.module.named_parameters() if p.requires_grad]
        if not trained:
            raise ValueError("nothing to train: every parameter is frozen (check lora / freeze settings)")
        vision = [p for name, p in trained if ".visual." in f".{name}"]
        text = [p for name, p in trained if ".visual." not in f".{name}"]
        groups = [{"params": ps, "lr": lr} for ps, lr in
                  ((text, config.learning_rate), (vision, config.learning_rate * config.vision_learning_rate_scale)) if ps]
        self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                           eps=config.adam_epsilon, weight_decay=config.weight_decay)
        self.scheduler = cosine_with_warmup(self.optimizer, self.warmup_steps, self.total_steps,
                                            config.min_learning_rate_ratio)
        plugin = getattr(acc.state, "deepspeed_plugin", None)
        if plugin is not None:
            # No data loader goes through accelerate (each process reads its own samples), so
            # DeepSpeed's "auto" batch values are filled here: per_device_batch_size windows per forward.
            plugin.deepspeed_config.update({
                "train_micro_batch_size_per_gpu": config.per_device_batch_size,
                "gradient_accumulation_steps": self.micro_steps,
                "train_batch_size": self.global_batch, "gradient_clipping": config.max_grad_norm or 0.0})
        self.module, self.optimizer = acc.prepare(self.module, self.optimizer)
        # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper would
        # step it once per process), and saved with the checkpoints.
        acc.register_for_checkpointing(self.scheduler)
        self.step = 0
        if resume:
            self._resume()
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.yaml").write_text(yaml.safe_dump(as_dict(config), sort_keys=False))

    # ----- setup -------------------------------------------------------------------------------
    def _load_model(self) -> None:
        config, acc = self.config, self.accelerator
        model_config = config.model
        model_config.device = str(acc.device)
        self.loaded: LoadedModel = load_model(model_config)
        manifest = self.dataset.manifest
        identity = manifest["tokenizer"]
        probe = self.loaded.tokenizer.encode(" A red circle appears on the left. ...", add_special_tokens=False)
        if identity["vocab_size"] != len(self.loaded.tokenizer) or identity["probe"] != list(map(int, probe)):
            raise ValueError(f"{config.data} was built with another tokenizer ({identity['name']}, "
                             f"{identity['vocab_size']} tokens) than {model_config.model}'s; rebuild it with "
                             f"`svlm build-dataset ... --model {model_config.model}`")
        fps = manifest["engine"]["frames"]["fps"]
        self.builder = SequenceBuilder(self.loaded.tokenizer, manifest["engine"], self.loaded.time_step(fps),
                                       self.loaded.normalization)
        core = self.loaded.model
        for name, param in core.named_parameters():
            if config.freeze_vision and ".visual." in f".{name}":
                param.requires_grad_(False)
            if not config.train_embeddings and "embed_tokens" in name:
                param.requires_grad_(False)
        if config.lora.enabled:
            from peft import LoraConfig, get_peft_model

            names = "|".join(config.lora.target_modules)
            lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                              target_modules=rf"^(?!.*visual).*\.({names})$", bias="none")
            core = get_peft_model(core, lora)
        if config.gradient_checkpointing:
            (core.get_base_model() if config.lora.enabled else core).gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
            if config.lora.enabled:
                core.enable_input_require_grads()
        core.train()
        self.core = core
        self.module = WindowLoss(core, train_vision=not config.freeze_vision)
        if core.get_output_embeddings().weight is core.get_input_embeddings().weight:
            logging.getLogger("accelerate.utils.other").addFilter(_tied_head_notice)
        trainable = sum(p.numel() for p in core.parameters() if p.requires_grad)
        total = sum(p.numel() for p in core.parameters())
        log.info("training %.1fM of %.1fM parameters (%s)", trainable / 1e6, total / 1e6,
                 "LoRA" if config.lora.enabled else "full fine-tune, vision " + ("frozen" if config.freeze_vision else "trained"))

    def _split(self) -> None:
        metadata = self.dataset.all_metadata()
        sources = sorted({m["source"] for m in metadata})
        held = split_sources(sources, self.config.eval_fraction, self.config.eval_sources)
        self.train_indices = [i for i, m in enumerate(metadata) if m["source"] not in held]
        self.eval_indices = [i for i, m in enumerate(metadata) if m["source"] in held][:self.config.max_eval_samples]
        if not self.train_indices:
            raise ValueError(f"no training samples left after holding out {sorted(held)}; lower eval_fraction "
                             "or add sources")
        self.train_meta = [metadata[i] for i in self.train_indices]
        log.info("%d training samples, %d held out for eval (sources %s)", len(self.train_indices),
                 len(self.eval_indices), sorted(held))

    # ----- checkpoints -------------------------------------------------------------------------
    def checkpoints(self) -> List[Path]:
        folder = self.out / CHECKPOINTS
        if not folder.is_dir():
            return []
        done = [p for p in folder.iterdir() if (p / STATE_FILE).exists()]
        return sorted(done, key=lambda p: json.loads((p / STATE_FILE).read_text())["step"])

    def _resume(self) -> None:
        found = self.checkpoints()
        if not found:
            return
        latest = found[-1]
        state = json.loads((latest / STATE_FILE).read_text())
        if state["total_steps"] != self.total_steps or state["global_batch"] != self.global_batch:
            raise ValueError(f"{latest} is from a run of {state['total_steps']} steps x {state['global_batch']} "
                             f"samples, this config gives {self.total_steps} x {self.global_batch}; use a new "
                             "output_dir or the same config")
        self.accelerator.load_state(str(latest))
        self.step = state["step"]
        log.info("resumed from %s (step %d of %d)", latest, self.step, self.total_steps)

    def save_checkpoint(self) -> None:
        acc = self.accelerator
        path = self.out / CHECKPOINTS / f"step-{self.step:07d}"
        acc.save_state(str(path))
        if acc.is_main_process:
            state = {"step": self.step, "total_steps": self.total_steps, "global_batch": self.global_batch}
            (path / STATE_FILE).write_text(json.dumps(state))  # last: a checkpoint without it is incomplete
            for old in self.checkpoints()[:-self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    # ----- the loop ----------------------------------------------------------------------------
    def _loader(self, indices: List[int]):
        dataset = _BuiltSamples(self.dataset, self.builder, indices, blank=self.config.blank_frames)
        workers = self.config.num_workers if len(indices) > 1 else 0
        return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                           collate_fn=_identity, persistent_workers=False,
                                           prefetch_factor=2 if workers else None,
                                           worker_init_fn=functools.partial(_end_with_trainer, os.getpid()))

    def _step_samples(self, step: int) -> List[int]:
        """Positions (into train_indices) of this process's samples of one optimizer step."""
        batch = global_order(len(self.train_indices), step * self.global_batch, (step + 1) * self.global_batch,
                             self.config.seed)
        rank = self.accelerator.process_index
        return batch[rank * self.process_batch:(rank + 1) * self.process_batch]

    def train(self, stop_at: Optional[int] = None) -> Dict:
        """Run to the last step (or `stop_at`, to simulate an interruption); returns the last losses."""
        acc, config = self.accelerator, self.config
        stop = min(self.total_steps, stop_at or self.total_steps)
        if self.step >= stop:
            return {"step": self.step}
        order, step_counts = [], []
        for step in range(self.step, stop):
            positions = self._step_samples(step)
            order += [self.train_indices[p] for p in positions]
            # Every process needs the label count of the whole global batch before its backward.
            step_counts.append(sum(label_count(self.builder, self.train_meta[p])
                                   for p in global_order(len(self.train_indices), step * self.global_batch,
                                                         (step + 1) * self.global_batch, config.seed)))
        log_path = self.out / "log.csv"
        new_log = not log_path.exists() or self.step == 0
        if not new_log and acc.is_main_process:
            keep_log_upto(log_path, self.step)
        writer_file = open(log_path, "w" if new_log else "a", newline="") if acc.is_main_process else None
        writer = csv.writer(writer_file) if writer_file else None
        if writer and new_log:
            writer.writerow(["step", "epoch", "loss", "eval_loss", "lr", "grad_norm", "labels", "seconds"])
        bar = progress(total=stop, initial=self.step, desc="train", unit="step", disable=not acc.is_main_process
                       or None)
        self.module.train()
        loader = iter(self._loader(order))
        last = {}
        started = time.monotonic()
        try:
            while self.step < stop:
                count = step_counts[self.step - (stop - len(step_counts))]
                scale = self.world * self.micro_steps / count
                loss_sum = torch.zeros((), device=acc.device)
                grad_norm = None
                lr = self.scheduler.get_last_lr()[0]  # this step's rate (the scheduler moves on below)
                for _ in range(self.micro_steps):
                    windows = [to_inputs(next(loader), acc.device) for _ in range(config.per_device_batch_size)]
                    with acc.accumulate(self.module):
                        with acc.autocast():
                            summed = self.module(windows)
                        acc.backward(summed * scale)
                        loss_sum += summed.detach()
                        if acc.sync_gradients:
                            if config.max_grad_norm:
                                grad_norm = acc.clip_grad_norm_(self.module.parameters(), config.max_grad_norm)
                            self.optimizer.step()
                            self.scheduler.step()
                            self.optimizer.zero_grad(set_to_none=True)
                loss = acc.reduce(loss_sum, "sum").item() / count
                self.step += 1
                eval_loss = None
                if self.eval_indices and (self.step == self.total_steps or
                                          (config.eval_every and self.step % config.eval_every == 0)):
                    eval_loss = self.evaluate()
                last = {"step": self.step, "loss": loss, "eval_loss": eval_loss, "lr": lr}
                if writer and (self.step % config.log_every == 0 or eval_loss is not None or self.step == stop):
                    writer.writerow([self.step, round(self.step * self.global_batch / len(self.train_indices), 4),
                                     f"{loss:.6f}", "" if eval_loss is None else f"{eval_loss:.6f}", f"{lr:.3e}",
                                     "" if grad_norm is None else f"{float(grad_norm):.4f}", count,
                                     f"{time.monotonic() - started:.1f}"])
                    writer_file.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
                if config.save_every and self.step % config.save_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
        finally:
            bar.close()
            if writer_file:
                writer_file.close()
        if self.step == self.total_steps:
            self.save_checkpoint()
            if acc.is_main_process:
                plot_losses(log_path, self.out / "loss.png")
            if config.export:
                self.export(self.out / "model")
        return last

    @torch.no_grad()
    def evaluate(self) -> float:
        acc = self.accelerator
        self.module.eval()
        mine = self.eval_indices[acc.process_index::self.world]
        total = torch.zeros((), device=acc.device)
        labels = torch.zeros((), device=acc.device)
        for built in self._loader(mine):
            with acc.autocast():
                total += self.module([to_inputs(built, acc.device)]).float()
            labels += built.label_count
        self.module.train()
        return (acc.reduce(total, "sum") / acc.reduce(labels, "sum").clamp(min=1)).item()

    # ----- export ------------------------------------------------------------------------------
    def export(self, path: Path) -> Path:
        """A Hugging Face directory the engine loads by path (LoRA merged in)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        module = acc.unwrap_model(self.module)
        core = module.core
        state = None
        if self.config.lora.enabled:
            core = core.merge_and_unload()
        elif acc.distributed_type.value == "DEEPSPEED":
            full = acc.get_state_dict(self.module)  # gathers ZeRO-3 shards onto the main process
            state = {k.removeprefix("core."): v for k, v in full.items()} if full is not None else None
        if acc.is_main_process:
            if path.exists():
                shutil.rmtree(path)
            core.save_pretrained(str(path), state_dict=state, safe_serialization=True)
            self.loaded.tokenizer.save_pretrained(str(path))
            write_processor_files(path, self.loaded)
            record = {"training": as_dict(self.config), "steps": self.step,
                      "dataset": {k: self.dataset.manifest[k] for k in ("sources", "samples", "seconds", "engine")}}
            (path / "svlm_training.json").write_text(json.dumps(record, indent=2))
            log.info("exported the fine-tuned model to %s", path)
        acc.wait_for_everyone()
        return path


def keep_log_upto(path: Path, step: int) -> None:
    """Drop the rows of steps after `step` (a killed run's, redone from its checkpoint) and a row
    cut short by the kill, so log.csv and loss.png hold each step once."""
    lines = path.read_text().splitlines(keepends=True)
    header, rows = lines[:1], lines[1:]
    columns = len(header[0].split(",")) if header else 0
    kept = [row for row in rows if row.endswith("\n") and len(row.split(",")) == columns
            and row.split(",")[0].isdigit() and int(row.split(",")[0]) <= step]
    if len(kept) != len(rows):
        log.info("%s: dropped %d rows after step %d, the checkpoint this run resumes from", path,
                 len(rows) - len(kept), step)
        path.write_text("".join(header + kept))


def write_processor_files(path: Path, loaded: LoadedModel) -> None:
    """The base checkpoint's processor files, or Qwen2-VL's defaults for random-weight models."""
    base = Path(loaded.name)
    copied = False
    if base.is_dir():
        for name in ("preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json",
                     "chat_template.jinja", "generation_config.json"):
            if (base / name).exists() and not (path / name).exists():
                shutil.copy(base / name, path / name)
                copied = copied or name == "preprocessor_config.json"
    if not copied:
        norm = loaded.normalization
        (path / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "Qwen2VLImageProcessor", "image_mean": list(norm.mean),
            "image_std": list(norm.std), "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}, indent=2))


def plot_losses(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses, eval_steps, eval_losses = [], [], [], []
    with log_path.open() as handle:
        for row in csv.DictReader(handle):
            steps.append(int(row["step"]))
            losses.append(float(row["loss"]))
            if row["eval_loss"]:
                eval_steps.append(int(row["step"]))
                eval_losses.append(float(row["eval_loss"]))
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, losses, label="train (mean per label token)")
    if eval_steps:
        axis.plot(eval_steps, eval_losses, "o-", label="held-out")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cross-entropy")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)


# ----- command line ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a training config (training/configs/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a config value (e.g. max_steps=10, lora.enabled=true); repeatable")
    parser.add_argument("--no-resume", action="store_true", help="ignore checkpoints in output_dir")


def run(args: argparse.Namespace) -> int:
    overrides = parse_assignments(args.set, example="max_steps=10", empty=None)
    config = load_train_config(args.config, overrides)
    trainer = Trainer(config, resume=not args.no_resume)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        print(f"step {trainer.step}/{trainer.total_steps}: loss {result.get('loss', float('nan')):.4f}"
              + (f", held-out {result['eval_loss']:.4f}" if result.get("eval_loss") is not None else "")
              + f"; log {trainer.out / 'log.csv'}, curve {trainer.out / 'loss.png'}"
              + (f", model {trainer.out / 'model'}" if config.export else ""))
    return 0


def main(argv=None) -> int:
    return command.main("training.train", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
