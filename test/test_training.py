"""training/: the dataset builder, the trainer's sequences against the engine's, and training itself.

Everything runs on the tiny random model with 56x84 frames (6 vision tokens a second), so the
file takes well under a minute of CPU.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # training/ is a top-level folder beside svlm_ros/
    sys.path.insert(0, str(ROOT))

from test_engine_behaviour import ScriptedSampler  # noqa: E402

from svlm_ros.config import CachePolicy, EngineConfig, NodeConfig  # noqa: E402
from svlm_ros.engine.session import StreamSession  # noqa: E402
from svlm_ros.engine.windows import WindowAssembler  # noqa: E402
from svlm_ros.replay.synth import write_synthetic_bag  # noqa: E402
from training.config import DatasetConfig, TrainConfig  # noqa: E402
from training.dataset import DatasetBuilder, ShardedDataset, parse_sources  # noqa: E402
from training.samples import IGNORE, SequenceBuilder  # noqa: E402

HEIGHT, WIDTH = 56, 84
MIN_PIXELS = 3136


def engine_config(cache=None) -> EngineConfig:
    config = EngineConfig(cache=cache or CachePolicy())
    config.frames.min_pixels = MIN_PIXELS
    config.generation.max_new_tokens = 64
    config.generation.decode_mode = "dynamic"
    return config


def build(out, sources, tokenizer, engine=None, **dataset):
    builder = DatasetBuilder(out, DatasetConfig(**dataset), engine or engine_config(), NodeConfig(), tokenizer)
    for source in sources:
        builder.add(source)
    builder.finish(sources)
    return ShardedDataset(out), json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    paths = []
    for k, seconds in enumerate((40, 30, 30)):
        path = root / f"shapes{k}"
        write_synthetic_bag(path, seconds, height=HEIGHT, width=WIDTH, seed=k + 1)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def dataset(bags, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ds"
    data, report = build(out, parse_sources([str(p) for p in bags]), tiny_model.tokenizer)
    return data


def raw_windows(bag):
    """The bag's 1-s windows as the replay tool cuts them (header stamps, engine sampler)."""
    from svlm_ros.sources import bags as bag_io
    from svlm_ros.sources.images import to_rgb
    from svlm_ros.sources.stamps import to_seconds

    reader = bag_io.open_bag(bag)
    topics = bag_io.image_topics(reader, [])
    frames = engine_config().frames
    assembler = WindowAssembler(frames.window_seconds, frames.frames_per_window)
    windows = []
    for connection, _, raw in bag_io.messages(reader, topics):
        msg = reader.deserialize(raw, connection.msgtype)
        stamp = to_seconds(msg.header.stamp)
        windows += assembler.add(stamp, to_rgb(msg) if assembler.wants(stamp) else None).windows
    windows.append(assembler.flush())
    reader.close()
    return windows


def test_trainer_sequence_equals_the_engine_streaming_the_same_seconds(bags, dataset, tiny_model):
    sample = dataset[0]
    meta = sample.meta
    assert meta["source"] == str(bags[0]) and meta["start_s"] == 0 and len(meta["seconds"]) == 24
    builder = SequenceBuilder(tiny_model.tokenizer, dataset.manifest["engine"], tiny_model.time_step(2.0))
    built = builder.build(meta, [sample.second_frames(k) for k in range(24)])

    session = StreamSession(tiny_model, engine_config(CachePolicy.unlimited()))
    im_end = session.prompt.special.im_end
    script = []
    for second in meta["seconds"]:
        script += builder.answer_ids(second["text"]) + builder.marker_ids + [im_end]
    session.sampler = ScriptedSampler(script)
    for window in raw_windows(bags[0])[:24]:
        assert not session.step(window.frames, window.start_s, window.end_s).truncated
    np.testing.assert_array_equal(built.tokens, session.table.tokens())
    np.testing.assert_array_equal(built.positions, session.table.position_ids())
    # The stored frames give the engine's vision input of the original frames, patch for patch.
    from svlm_ros.engine.frames import preprocess_frames

    engine_pixels = np.concatenate([preprocess_frames(w.frames, MIN_PIXELS, 602_112).pixel_values
                                    for w in raw_windows(bags[0])[:24]])
    np.testing.assert_array_equal(built.pixel_values, engine_pixels)
    texts = [session.prompt.decode(s.tokens) for s in session.table.segments if s.kind.value == "assistant_text"]
    assert texts == [" " + s["text"] for s in meta["seconds"] if s["text"]]


def test_labels_cover_exactly_the_assistant_answers(dataset, tiny_model):
    sample = dataset[1]
    builder = SequenceBuilder(tiny_model.tokenizer, dataset.manifest["engine"], tiny_model.time_step(2.0))
    built = builder.build(sample.meta, [sample.second_frames(k) for k in range(len(sample.meta["seconds"]))])
    tokenizer = tiny_model.tokenizer
    im_start, im_end = builder.prompt.special.im_start, builder.prompt.special.im_end
    header = builder.prompt.assistant_open()
    expected = np.full(len(built.tokens), IGNORE)
    tokens = built.tokens.tolist()
    # The reference's rule, by scanning here (the trainer never scans): from the first token
    # after `<|im_start|>assistant\n` through `<|im_end|>` inclusive.
    k = 0
    while k < len(tokens):
        if tokens[k:k + len(header)] == header:
            end = tokens.index(im_end, k + len(header))
            expected[k + len(header):end + 1] = tokens[k + len(header):end + 1]
            k = end
        k += 1
    np.testing.assert_array_equal(built.labels, expected)
    assert im_start not in built.labels.tolist()
    answers = tokenizer.decode(built.labels[built.labels != IGNORE].tolist())
    for second in sample.meta["seconds"]:
        assert f" {second['text']} ..." in answers if second["text"] else " ..." in answers
    assert built.label_count == sum(len(builder.answer_ids(s["text"])) + len(builder.marker_ids) + 1
                                    for s in sample.meta["seconds"])
    # Previous text is the words before the window, as the engine moves them: plain transcript.
    assert sample.meta["start_s"] == 12
    previous = tokenizer.decode(sample.meta["previous_ids"])
    assert "..." not in previous and previous.startswith(" A ")


def test_a_mid_stream_samples_previous_text_is_the_engines_cut_with_the_robots_cache_settings(bags, tiny_model,
                                                                                                tmp_path):
    """Issue 21, defect 7: `--params` with cache.sink_tokens=8 was ignored (the dataset cut at 512/512 of
    its own). The builder now cuts with the engine's rule and the robot's numbers: the previous text of the
    sample starting at 12 s is, token for token, what the engine's cache holds when it reaches 12 s."""
    policy = CachePolicy(vision_windows=None, text_windows=0, sink_tokens=8, recent_tokens=16)
    data, _ = build(tmp_path / "ds", parse_sources([str(bags[0])]), tiny_model.tokenizer, engine=engine_config(policy))
    first, sample = data[0], data[1]
    assert sample.meta["start_s"] == 12 and len(sample.meta["previous_ids"]) == 8 + 16  # cut: the text is longer
    builder = SequenceBuilder(tiny_model.tokenizer, data.manifest["engine"], tiny_model.time_step(2.0))
    session = StreamSession(tiny_model, engine_config(policy))
    im_end = session.prompt.special.im_end
    script = []
    for second in first.meta["seconds"][:13]:
        script += builder.answer_ids(second["text"]) + builder.marker_ids + [im_end]
    session.sampler = ScriptedSampler(script)
    for window in raw_windows(bags[0])[:13]:  # the policy runs as window 12 comes in: answers 0..11 moved
        session.step(window.frames, window.start_s, window.end_s)
    from svlm_ros.engine.segments import Kind

    engine_previous = [int(t) for s in session.table.of_kind(Kind.PREV_TEXT) for t in s.tokens]
    assert engine_previous == sample.meta["previous_ids"]


# ----- the builder on each source kind, bad input reported not fatal -----------------------------
def write_bag_with_text(path, seconds=30, compressed=False, corrupt_at=()):
    """A camera plus a std_msgs/String narration and a svlm_ros Description topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from svlm_ros.replay.synth import START_NS, Scene, image_message
    from svlm_ros.sources.messages import DESCRIPTION, typestore

    store = typestore()
    scene = Scene(seconds, seed=7)
    image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    Time = store.types["builtin_interfaces/msg/Time"]
    Header = store.types["std_msgs/msg/Header"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        camera = writer.add_connection("/cam/image_raw" + ("/compressed" if compressed else ""), image_type,
                                       typestore=store)
        narration = writer.add_connection("/narration", "std_msgs/msg/String", typestore=store)
        described = writer.add_connection("/svlm/description", DESCRIPTION, typestore=store)
        for n in range(seconds * 10):
            stamp = START_NS + n * 100_000_000
            msg = image_message(store, scene.frame(n / 10, HEIGHT, WIDTH), stamp, "cam", compressed)
            if n in corrupt_at:
                msg.data = np.frombuffer(b"not a jpeg at all", np.uint8)
            writer.write(camera, stamp, store.serialize_cdr(msg, image_type))
        for second, text in enumerate(scene.texts):
            if not text:
                continue
            end = START_NS + (second + 1) * 1_000_000_000 - 1_000_000
            writer.write(narration, end, store.serialize_cdr(store.types["std_msgs/msg/String"](data=text),
                                                             "std_msgs/msg/String"))
            start_t = Time(sec=(START_NS // 10**9) + second, nanosec=0)
            end_t = Time(sec=(START_NS // 10**9) + second + 1, nanosec=0)
            message = store.types[DESCRIPTION](
                header=Header(stamp=end_t, frame_id="cam"), window_start=start_t, window_end=end_t,
                camera="/cam/image_raw", text=text, silent=False, index=second, latency=0.1,
                generated_tokens=5, cache_tokens=100)
            writer.write(described, end, store.serialize_cdr(message, DESCRIPTION))
    return scene


def texts_of(data):
    return [s["text"] for m in data.all_metadata() for s in m["seconds"] if m["start_s"] == 0]


def test_builder_reads_every_text_source_and_reports_bad_input(tmp_path, bags, tiny_model):
    import cv2

    tokenizer = tiny_model.tokenizer
    bag = tmp_path / "narrated"
    scene = write_bag_with_text(bag, compressed=True, corrupt_at={0, 55})
    truth = scene.texts[:24]
    # A topic of the bag: Description messages (a replay's output) and String by receive time.
    for topic in ("/svlm/description", "/narration"):
        data, report = build(tmp_path / topic.strip("/").replace("/", "_"), parse_sources([f"{bag}={topic}"]),
                             tokenizer)
        assert texts_of(data) == truth
        # The corrupt JPEG at 0 s is reported; the sampler found another frame for that slot.
        assert report["skipped"]["unreadable frames"]["count"] >= 1
    # Sidecars: WebVTT and SRT beside a bag, and a global --text-topic.
    vtt_bag, srt_bag = tmp_path / "a", tmp_path / "b"
    (synthetic,) = write_synthetic_bag(vtt_bag, 26, height=HEIGHT, width=WIDTH, seed=4).values()
    write_synthetic_bag(srt_bag, 26, height=HEIGHT, width=WIDTH, seed=4)
    (tmp_path / "a.reference.jsonl").unlink()
    (tmp_path / "b.reference.jsonl").unlink()
    vtt = (tmp_path / "a.reference.vtt").read_text()
    (tmp_path / "b.reference.vtt").unlink()
    (tmp_path / "b.srt").write_text("\n\n".join(
        f"{n}\n{block.splitlines()[0].replace('.', ',')}\n{block.splitlines()[1]}"
        for n, block in enumerate(vtt.split("\n\n")[1:], 1) if "-->" in block))
    for sources, expected in ((parse_sources([str(vtt_bag)]), synthetic.texts[:24]),
                              (parse_sources([str(srt_bag)]), synthetic.texts[:24]),
                              (parse_sources([str(bag)], text_topic="/narration"), truth)):
        data, _ = build(tmp_path / f"ds{abs(hash(str(sources)))}", sources, tokenizer)
        assert len(data) >= 1 and any(texts_of(data))
        assert texts_of(data) == expected  # each second's words, from the sidecar or topic
    # A plain video file with a JSONL sidecar of words (one per line, with times).
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (WIDTH, HEIGHT))
    for n in range(300):
        writer.write(cv2.cvtColor(scene.frame(n / 10, HEIGHT, WIDTH), cv2.COLOR_RGB2BGR))
    writer.release()
    with (tmp_path / "clip.jsonl").open("w") as lines:
        for second, text in enumerate(scene.texts):
            for k, word in enumerate(text.split()):
                lines.write(json.dumps({"word": word, "start": second + k * 0.1, "end": second + (k + 1) * 0.1}) + "\n")
        lines.write(json.dumps({"word": "late", "start": 95.0, "end": 95.5}) + "\n")  # after the video
    data, report = build(tmp_path / "video_ds", parse_sources([str(video)]), tokenizer)
    assert texts_of(data) == truth
    assert report["skipped"]["words outside the video"]["count"] == 1
    # Bad input: an unreadable bag, a bag without text, a broken sidecar: reported, the rest built.
    broken = tmp_path / "broken.mcap"
    broken.write_bytes(b"\x89MCAP0\r\n garbage")
    bad_text = tmp_path / "c"
    write_synthetic_bag(bad_text, 26, height=HEIGHT, width=WIDTH, seed=5)
    (tmp_path / "c.reference.jsonl").write_text("{not json\n")
    no_text = tmp_path / "d"
    write_synthetic_bag(no_text, 26, height=HEIGHT, width=WIDTH, seed=6)
    for path in (tmp_path / "d.reference.jsonl", tmp_path / "d.reference.vtt"):
        path.unlink()
    (tmp_path / "broken.jsonl").write_text(json.dumps({"start": 0, "end": 1, "text": "x"}) + "\n")
    sources = parse_sources([str(broken), str(bad_text), str(no_text), str(bags[1])])
    data, report = build(tmp_path / "mixed", sources, tokenizer)
    assert {m["source"] for m in data.all_metadata()} == {str(bags[1])}
    skipped = report["skipped"]
    assert skipped["source could not be opened"]["count"] == 1 and "broken.mcap" in \
        skipped["source could not be opened"]["examples"][0]
    assert skipped["text could not be read"]["count"] == 1 and skipped["source without text"]["count"] == 1


def test_windows_overlap_and_silent_windows_are_reported(dataset):
    spans = [(m["source"][-7:], m["start_s"], m["end_s"]) for m in dataset.all_metadata()]
    assert spans == [("shapes0", 0, 24), ("shapes0", 12, 36), ("shapes0", 24, 40),
                     ("shapes1", 0, 24), ("shapes1", 12, 30), ("shapes2", 0, 24), ("shapes2", 12, 30)]
    meta = dataset.all_metadata()[1]
    assert [s["index"] for s in meta["seconds"]] == list(range(12, 36))
    assert dataset.manifest["shards"][0]["samples"] == len(dataset)
    frames = dataset[0].frames
    assert frames.dtype == np.uint8 and frames.shape == (24, 2, 56, 84, 3)


# ----- training ----------------------------------------------------------------------------------
def train_config(data, out, **values) -> TrainConfig:
    from svlm_ros.config import ModelConfig

    settings = dict(data=str(data.directory), output_dir=str(out), learning_rate=1e-2, warmup_ratio=0.0,
                    max_steps=4, eval_fraction=0.0, save_every=0, num_workers=0, export=False,
                    model=ModelConfig(model="tiny-random", device="cpu", dtype="float32"))
    settings.update(values)
    return TrainConfig(**settings)


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.module).state_dict().items()}


def test_resume_gives_the_same_weights_as_one_run(dataset, tmp_path, caplog):
    from training.train import Trainer

    whole = Trainer(train_config(dataset, tmp_path / "whole"))
    whole.train()
    first = Trainer(train_config(dataset, tmp_path / "split", save_every=2))
    first.train(stop_at=2)
    assert first.step == 2
    del first
    resumed = Trainer(train_config(dataset, tmp_path / "split", save_every=2))
    assert resumed.step == 2  # picked up the checkpoint
    resumed.train()
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    rows = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    # The tied head left out of each checkpoint (restored above) is not warned about at every save.
    assert not [r for r in caplog.records if "Removed shared tensor" in r.getMessage()]


def test_the_vision_tower_trains_at_its_own_rate_through_the_schedule(dataset, tmp_path):
    from training.train import Trainer

    trainer = Trainer(train_config(dataset, tmp_path / "run", freeze_vision=False, vision_learning_rate_scale=3.0,
                                   warmup_ratio=0.5))
    core = trainer.accelerator.unwrap_model(trainer.module).core
    visual = {id(p) for name, p in core.named_parameters() if ".visual." in f".{name}"}
    text, vision = trainer.optimizer.param_groups
    assert {id(p) for p in vision["params"]} == visual and not visual & {id(p) for p in text["params"]}
    assert len(text["params"]) + len(vision["params"]) == sum(1 for p in core.parameters() if p.requires_grad)
    rates = []
    for _ in range(3):
        rates.append([group["lr"] for group in trainer.optimizer.param_groups])
        trainer.train(stop_at=trainer.step + 1)
    assert len({round(v / t, 9) for t, v in rates}) == 1 and rates[0][1] / rates[0][0] == pytest.approx(3.0)
    assert rates[0] != rates[1]  # warmup and cosine move both groups
    frozen = Trainer(train_config(dataset, tmp_path / "frozen", freeze_vision=True, vision_learning_rate_scale=3.0))
    assert len(frozen.optimizer.param_groups) == 1  # nothing of the tower is trained


def test_short_training_lowers_the_loss_and_the_checkpoint_streams_in_replay(dataset, bags, tmp_path):
    from svlm_ros.cli import main as svlm
    from training.train import Trainer

    out = tmp_path / "run"
    trainer = Trainer(train_config(dataset, out, max_steps=12, eval_fraction=0.3, eval_every=12, export=True))
    result = trainer.train()
    rows = [line.split(",") for line in (out / "log.csv").read_text().splitlines()[1:]]
    losses = [float(r[2]) for r in rows]
    assert losses[-1] < 0.6 * losses[0], losses
    assert result["eval_loss"] is not None and (out / "loss.png").stat().st_size > 0
    model = out / "model"
    assert (model / "model.safetensors").exists() and (model / "svlm_training.json").exists()
    replay = tmp_path / "replay"
    assert svlm(["replay", str(bags[2]), "--out", str(replay), "--model", str(model), "--device", "cpu",
                 "--set", f"frames.min_pixels={MIN_PIXELS}", "--end", "3", "--thumbnails", "1"]) == 0
    lines = (replay / "descriptions.jsonl").read_text().splitlines()
    assert len(lines) >= 3


def test_windows_in_one_forward_train_as_the_same_windows_accumulated(dataset, tmp_path):
    """per_device_batch_size windows in one forward (one embedding lookup, one head product) ==
    as many forwards of one window accumulated: the same losses and the same weights."""
    from training.train import Trainer

    runs = {}
    for name, batch, accumulate in (("forward", 3, 1), ("accumulated", 1, 3), ("mixed", 3, 2)):
        trainer = Trainer(train_config(dataset, tmp_path / name, max_steps=3, per_device_batch_size=batch,
                                       gradient_accumulation_steps=accumulate, freeze_vision=False))
        trainer.train()
        losses = [float(line.split(",")[2]) for line in (tmp_path / name / "log.csv").read_text().splitlines()[1:]]
        runs[name] = (losses, weights(trainer), trainer.global_batch)
    (one, a, three), (many, b, also_three) = runs["forward"], runs["accumulated"]
    assert three == also_three == 3 and runs["mixed"][2] == 6
    np.testing.assert_allclose(one, many, rtol=1e-5)
    for name in a:
        # A key's bias moves every score of a query alike, so softmax leaves it no gradient but
        # rounding, which Adam scales up toward a whole step: its tolerance is wider.
        atol = 1e-5 if "k_proj.bias" in name else 1e-6
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=atol, msg=name)
    assert one[-1] < one[0] and runs["mixed"][0] != one  # six windows a step are another run


def test_two_processes_match_one_with_the_same_global_batch(dataset, tmp_path):
    """Data parallel (gloo on CPU, as torchrun launches it) == one process accumulating twice."""
    import os
    import socket
    import subprocess

    import yaml

    from training.config import as_dict
    from training.train import Trainer

    single = Trainer(train_config(dataset, tmp_path / "one", max_steps=3, gradient_accumulation_steps=2,
                                  learning_rate=5e-3))
    single.train()
    config = as_dict(train_config(dataset, tmp_path / "two", max_steps=3, gradient_accumulation_steps=1,
                                  learning_rate=5e-3))
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "training.train",
                           "--log-level", "WARNING", "--config", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    def losses(out):
        return [float(line.split(",")[2]) for line in (out / "log.csv").read_text().splitlines()[1:]]

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 3
    np.testing.assert_allclose(two, one, rtol=1e-4)
    assert one[-1] < one[0]


def test_lora_trains_only_adapters_and_exports_merged_weights_the_engine_loads(dataset, tmp_path):
    from svlm_ros.config import ModelConfig
    from svlm_ros.engine.models import load_model
    from training.config import LoraSettings
    from training.train import Trainer

    out = tmp_path / "lora"
    trainer = Trainer(train_config(dataset, out, max_steps=3, export=True,
                                   lora=LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0)))
    trainable = [n for n, p in trainer.module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    trainer.train()
    base = load_model(ModelConfig(model="tiny-random", device="cpu", dtype="float32")).model.state_dict()
    tuned = load_model(ModelConfig(model=str(out / "model"), device="cpu", dtype="float32")).model.state_dict()
    assert not any("lora" in k for k in tuned) and tuned.keys() == base.keys()
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    # The adapters were merged into the projections they target, and nothing else moved.
    assert changed and all(any(m in k for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj")) for k in changed), changed
    assert not any("visual" in k for k in changed)
