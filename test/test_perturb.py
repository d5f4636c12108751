"""`svlm perturb-bag`: exactly the named change to the pixels, nothing else in the bag."""
import numpy as np
import pytest
from rosbags.rosbag2 import Writer

from svlm_ros.cli import main as svlm
from svlm_ros.replay.perturb import Perturbation, perturb_bag
from svlm_ros.replay.synth import START_NS, image_message, write_synthetic_bag
from svlm_ros.sources.bags import open_bag
from svlm_ros.sources.images import to_rgb
from svlm_ros.sources.messages import typestore

FPS = 5


def frames(bag):
    """[(log time, header stamp, frame id, topic, RGB frame or the message's text)] in order."""
    reader = open_bag(bag)
    out = []
    try:
        for conn, time_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.msgtype.startswith("sensor_msgs"):
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                out.append((time_ns, stamp, msg.header.frame_id, conn.topic, to_rgb(msg)))
            else:
                out.append((time_ns, None, None, conn.topic, msg.data))
    finally:
        reader.close()
    return out


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_swapping_red_and_blue_changes_the_pixels_and_nothing_else(tmp_path, encoding):
    bag = tmp_path / "scene"
    write_synthetic_bag(bag, 3, height=24, width=32, fps=FPS, seed=4, encoding=encoding)
    counts = perturb_bag(bag, tmp_path / "swapped", Perturbation(swap_red_blue=True))
    before, after = frames(bag), frames(tmp_path / "swapped")
    assert counts["frames"] == len(before) == len(after) == 3 * FPS
    for (t, stamp, frame_id, topic, image), (t2, stamp2, frame_id2, topic2, image2) in zip(before, after):
        assert (t, stamp, frame_id, topic) == (t2, stamp2, frame_id2, topic2)
        assert np.array_equal(image2, image[:, :, ::-1])
    assert any(image[..., 0].max() > image[..., 2].max() for *_, image in before)  # a red-ish shape to swap
    for suffix in (".truth.jsonl", ".reference.jsonl", ".reference.vtt"):
        assert (tmp_path / f"swapped{suffix}").read_bytes() == (tmp_path / f"scene{suffix}").read_bytes()


def test_a_delay_shows_each_frame_seconds_late_with_the_stamps_kept(tmp_path):
    bag = tmp_path / "scene"
    write_synthetic_bag(bag, 4, height=24, width=32, fps=FPS, seed=2)
    perturb_bag(bag, tmp_path / "late", Perturbation(delay_seconds=2))
    before, after = frames(bag), frames(tmp_path / "late")
    assert [f[:4] for f in before] == [f[:4] for f in after]
    for k, (*_, image) in enumerate(after):
        assert np.array_equal(image, before[max(0, k - 2 * FPS)][4]), k
    assert not np.array_equal(after[-1][4], before[-1][4])  # the scene does change in 2 s


def test_other_topics_are_copied_as_they_are(tmp_path):
    store, bag = typestore(), tmp_path / "mixed"
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 220
    String = store.types["std_msgs/msg/String"]
    with Writer(bag, version=9) as writer:
        camera = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=store)
        notes = writer.add_connection("/notes", "std_msgs/msg/String", typestore=store)
        for k in range(3):
            stamp = START_NS + k * 500_000_000
            writer.write(camera, stamp, store.serialize_cdr(image_message(store, red, stamp, "cam", False),
                                                            "sensor_msgs/msg/Image"))
            writer.write(notes, stamp + 1, store.serialize_cdr(String(data=f"note {k}"), "std_msgs/msg/String"))
    counts = perturb_bag(bag, tmp_path / "out", Perturbation(swap_red_blue=True))
    assert counts == {"frames": 3, "undecodable": 0, "other": 3}
    after = frames(tmp_path / "out")
    assert [f[4] for f in after if f[3] == "/notes"] == ["note 0", "note 1", "note 2"]
    blue = [f[4] for f in after if f[3] == "/cam/image_raw"]
    assert all(b[..., 2].min() == 220 and b[..., :2].max() == 0 for b in blue)


def test_compressed_ros1_frames_are_swapped_and_delayed(tmp_path):
    bag = tmp_path / "scene.bag"
    write_synthetic_bag(bag, 3, "ros1", compressed=True, height=48, width=64, fps=FPS, seed=4)
    perturb_bag(bag, tmp_path / "both.bag", Perturbation(swap_red_blue=True, delay_seconds=1))
    before, after = frames(bag), frames(tmp_path / "both.bag")
    assert [f[:4] for f in before] == [f[:4] for f in after]
    for k, (*_, image) in enumerate(after):
        expected = before[max(0, k - FPS)][4][:, :, ::-1]
        assert np.abs(image.astype(int) - expected.astype(int)).mean() < 3, k  # JPEG, decoded twice


def test_bad_requests_name_what_to_do(tmp_path, capsys):
    bag = tmp_path / "scene"
    write_synthetic_bag(bag, 1, height=24, width=32, fps=FPS)
    assert svlm(["perturb-bag", str(bag), str(tmp_path / "a")]) == 2
    assert "give --swap-red-blue, --delay SECONDS or both" in capsys.readouterr().err
    assert svlm(["perturb-bag", str(bag), str(tmp_path / "a"), "--delay", "-1"]) == 2
    assert "--delay must be >= 0" in capsys.readouterr().err
    assert svlm(["perturb-bag", str(bag), str(bag), "--swap-red-blue"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert svlm(["perturb-bag", str(tmp_path / "absent"), str(tmp_path / "a"), "--swap-red-blue"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert svlm(["perturb-bag", str(bag), str(tmp_path / "a"), "--swap-red-blue"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "a.truth.jsonl").exists()
