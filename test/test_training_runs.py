"""svlm train's runs: what it refuses before loading a model, how many steps it takes, what
log.csv says after a resume, and a data-loader worker outliving a killed trainer."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # training/ is a top-level folder beside svlm_ros/
    sys.path.insert(0, str(ROOT))

from test_training import bags, dataset, train_config  # noqa: E402,F401  (fixtures)

from svlm_ros.replay.synth import write_synthetic_bag  # noqa: E402
from training.config import as_dict  # noqa: E402


def log_rows(out):
    return [line.split(",") for line in (out / "log.csv").read_text().splitlines()[1:]]


def write_config(path, config):
    path.write_text(yaml.safe_dump(as_dict(config)))
    return path


def test_a_resumed_run_logs_each_step_once(dataset, tmp_path):
    from training.train import Trainer

    killed = Trainer(train_config(dataset, tmp_path / "run", save_every=2))
    killed.train(stop_at=3)  # step 3 is logged, its checkpoint never written
    del killed
    resumed = Trainer(train_config(dataset, tmp_path / "run", save_every=2))
    assert resumed.step == 2
    resumed.train()
    assert [row[0] for row in log_rows(tmp_path / "run")] == ["1", "2", "3", "4"]


def test_the_lr_column_is_the_rate_each_step_was_taken_with(dataset, tmp_path):
    from training.train import Trainer

    Trainer(train_config(dataset, tmp_path / "one", max_steps=1, learning_rate=1e-2)).train()
    assert [row[4] for row in log_rows(tmp_path / "one")] == ["1.000e-02"]
    trainer = Trainer(train_config(dataset, tmp_path / "warm", max_steps=3, learning_rate=1e-2, warmup_ratio=0.5))
    factor = trainer.scheduler.lr_lambdas[0]
    trainer.train()
    assert [float(row[4]) for row in log_rows(tmp_path / "warm")] == \
        [float(f"{1e-2 * factor(step):.3e}") for step in range(3)]


def test_a_dataset_without_samples_is_named_as_such(tmp_path, tiny_model):
    from test_training import engine_config

    from svlm_ros.config import NodeConfig
    from training.config import DatasetConfig
    from training.dataset import DatasetBuilder, ShardedDataset, parse_sources
    from training.train import Trainer

    bag = tmp_path / "untold"
    write_synthetic_bag(bag, 26, height=56, width=84, seed=2)
    for sidecar in tmp_path.glob("untold.reference.*"):
        sidecar.unlink()
    sources = parse_sources([str(bag)])
    builder = DatasetBuilder(tmp_path / "empty", DatasetConfig(), engine_config(), NodeConfig(), tiny_model.tokenizer)
    builder.add(sources[0])
    builder.finish(sources)
    with pytest.raises(ValueError) as error:
        Trainer(train_config(ShardedDataset(tmp_path / "empty"), tmp_path / "run"))
    assert "has no samples; its report.json says what build-dataset skipped" in str(error.value)
    assert "eval_fraction" not in str(error.value)


def test_epochs_never_become_more_than_asked(dataset, tmp_path):
    from training.train import Trainer

    assert len(dataset) == 7
    with pytest.raises(ValueError, match="epochs 1 of 7 training samples is 7 samples, less than one optimizer "
                                         "step's global batch of 16"):
        Trainer(train_config(dataset, tmp_path / "run", max_steps=None, epochs=1.0, gradient_accumulation_steps=16))
    # To the nearest whole step: 1000 samples in steps of 512 are 2 steps, 600 are 1.
    from training.train import epoch_steps

    assert [epoch_steps(1, 1000, 512), epoch_steps(1, 600, 512), epoch_steps(8, 80, 1), epoch_steps(1, 7, 2)] == \
        [2, 1, 640, 4]


def test_device_cuda_without_cuda_is_refused(dataset, tmp_path):
    config = write_config(tmp_path / "cuda.yaml", train_config(dataset, tmp_path / "run", max_steps=1))
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "svlm_ros.cli", "train", "--config", str(config),
                           "--set", "model.device=cuda"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "model.device is 'cuda' but torch finds no CUDA device here" in done.stderr
    assert not (tmp_path / "run" / "log.csv").exists()


def children(pid):
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def is_gone(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_for(condition, what, deadline_s=300):
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)  # polling a condition, with a deadline only a broken run reaches


def test_the_data_loader_worker_dies_with_a_killed_trainer(dataset, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "long.yaml", train_config(dataset, out, max_steps=2000, num_workers=1))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    trainer = subprocess.Popen([sys.executable, "-m", "training.train", "--log-level", "WARNING", "--config",
                                str(config)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: trainer.poll() is not None or ((out / "log.csv").exists() and log_rows(out)),
                 "the first logged step")
        assert trainer.poll() is None, trainer.stderr.read().decode()[-3000:]
        (worker,) = children(trainer.pid)  # the one data-loader worker, busy with the next samples
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
        trainer.stderr.close()
    wait_for(lambda: is_gone(worker), f"data-loader worker {worker} ends after its trainer was killed",
             deadline_s=60)
