"""The video file's encoder thread (fer_common.video.sinks._EncoderThread): order, back-pressure, errors."""
import errno
import threading
import time

import cv2
import numpy as np
import pytest

import real_time_video
from fer_common.cli import FERError, run_main
from fer_common.video.sinks import VideoFile, _EncoderThread, _PyAVWriter, pyav_encoders
from helpers_models import TEST_VIDEO


class SlowWriter:
    """Records the first pixel of each frame it is handed, slower than the caller hands them over."""

    def __init__(self):
        self.seen, self.threads = [], set()

    def write(self, frame):
        time.sleep(0.002)
        self.seen.append(int(frame[0, 0, 0]))
        self.threads.add(threading.current_thread().name)

    def close(self):
        pass


def test_encoder_thread_keeps_order_and_holds_the_caller_back():
    writer = SlowWriter()
    encoder = _EncoderThread(writer)
    frame = np.zeros((8, 8, 3), np.uint8)            # one array, drawn on again after each write
    lags = []
    for k in range(60):
        frame[:] = k
        encoder.write(frame)
        lags.append(k + 1 - len(writer.seen))
    encoder.close()
    assert writer.seen == list(range(60))             # in order, and each frame as it was when handed over
    assert writer.threads == {"video-encode"}
    assert max(lags) <= _EncoderThread.QUEUE + 1      # the queue, and the one frame being encoded
    assert max(lags) >= 2                             # ... which the caller did run ahead into


def read_means(path) -> list[float]:
    cap = cv2.VideoCapture(str(path))
    means = []
    while (frame := cap.read()[1]) is not None:
        means.append(float(frame.mean()))
    cap.release()
    return means


def needs(codec):
    if codec not in pyav_encoders():
        pytest.skip(f"no {codec} encoder here (PyAV not installed, or its FFmpeg lacks it)")


@pytest.mark.parametrize("suffix, codec", [(".mp4", "libx264"), (".webm", "libvpx-vp9")])
def test_threaded_file_has_every_frame_in_order(tmp_path, suffix, codec):
    needs(codec)
    out = tmp_path / f"out{suffix}"
    frame = np.zeros((64, 96, 3), np.uint8)
    with VideoFile(out, 25.0, (96, 64)) as video:
        assert isinstance(video.writer, _EncoderThread)
        for k in range(30):
            frame[:] = 8 * k                          # the same array each time, as a caller may reuse it
            video.write(frame)
    means = read_means(out)
    # lossy (a step is undershot), but a rising ramp stays rising: every frame, in order, none repeated
    assert len(means) == 30 and all(a < b for a, b in zip(means, means[1:])), means
    assert means[0] == pytest.approx(0, abs=2) and means[-1] == pytest.approx(8 * 29, abs=4)


@pytest.mark.parametrize("suffix, codec", [(".mp4", "libx264"), (".webm", "libvpx-vp9")])
def test_colours_survive_the_yuv420p_conversion(tmp_path, suffix, codec):
    """Frames reach the encoder as yuv420p converted by OpenCV (BT.601, limited range, as FFmpeg reads it back):
    blue stays blue and skin stays skin, an odd last row and column are left out."""
    needs(codec)
    out = tmp_path / f"out{suffix}"
    colours = [(200, 40, 30), (40, 180, 60), (30, 60, 210), (90, 140, 200)]       # BGR: blue, green, red, skin
    frame = np.zeros((65, 97, 3), np.uint8)
    with VideoFile(out, 25.0, (97, 65)) as video:
        for k in range(8):
            for j, colour in enumerate(colours):
                frame[:, 24 * j:24 * (j + 1) + 1] = colour
            video.write(frame)
    cap = cv2.VideoCapture(str(out))
    read = []
    while (got := cap.read()[1]) is not None:
        read.append(got)
    cap.release()
    assert len(read) == 8 and read[0].shape == (64, 96, 3)
    for j, colour in enumerate(colours):
        patch = read[-1][8:56, 24 * j + 6:24 * j + 18].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(patch, colour, atol=6)


def failing_at(n, threads):
    """_PyAVWriter.write failing at frame n (1-based) as a full disk does, noting the thread it ran on."""
    original = _PyAVWriter.write

    def write(self, frame):
        threads.add(threading.current_thread().name)
        if self.count + 1 == n:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, frame)
    return write


@pytest.mark.parametrize("n", [3, 20])                # 20: the last frame, so the error surfaces at close
def test_an_error_in_the_encoder_thread_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, n):
    needs("libx264")
    threads = set()
    monkeypatch.setattr(_PyAVWriter, "write", failing_at(n, threads))
    out = tmp_path / "out.mp4"
    with pytest.raises(FERError) as e:
        with VideoFile(out, 25.0, (64, 48)) as video:
            for k in range(20):
                video.write(np.full((48, 64, 3), k, np.uint8))
    assert threads == {"video-encode"}
    assert str(e.value) == f"cannot write output video {out} (No space left on device); the partial file was removed"
    assert list(tmp_path.iterdir()) == []


def test_script_fails_cleanly_when_the_encoder_thread_fails(models, tmp_path, monkeypatch, capsys):
    needs("libx264")
    threads = set()
    monkeypatch.setattr(_PyAVWriter, "write", failing_at(10, threads))
    out = tmp_path / "out.mp4"
    with pytest.raises(SystemExit) as e:
        run_main(real_time_video.main, real_time_video.get_args_parser(),
                 ["--video", str(TEST_VIDEO), "--checkpoint", str(models / "fer_model.onnx"), "--no_display",
                  "--save_output", str(out), "--log_csv", str(tmp_path / "log.csv")])
    assert e.value.code == 1 and threads == {"video-encode"}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write output video") and "No space left" in err[0]
    assert list(tmp_path.iterdir()) == []
