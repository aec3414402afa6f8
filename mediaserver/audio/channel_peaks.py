"""Peaks read from mono Ogg Opus channel files, for stereo files made without decoding."""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import av.error
import numpy as np

from mediaserver.audio.peaks import Peaks, PeaksBuilder, combine_channels
from mediaserver.errors import MergeError


def read_channel_peaks(paths: Sequence[Path], samples_per_pixel: int, length: int) -> Peaks:
    """Decode each channel file (in parallel threads) into one channel of `length` points."""
    # The lossless stereo mode never decodes, so the waveform needs this decode of its own. PyAV
    # releases the GIL inside the decoder, so the channels decode side by side.
    with ThreadPoolExecutor(max_workers=len(paths), thread_name_prefix="peaks") as pool:
        parts = list(pool.map(lambda path: _read_mono_peaks(path, samples_per_pixel), paths))
    return combine_channels(parts, length=length)


def _read_mono_peaks(path: Path, samples_per_pixel: int) -> Peaks:
    """Decode one mono channel file frame by frame into its peaks."""
    builder = PeaksBuilder(samples_per_pixel, 1)
    try:
        container = av.open(str(path), "r")
    except av.error.EOFError:
        return builder.build()  # headers only: nobody spoke on this channel
    except av.error.FFmpegError as exc:
        raise MergeError(f"channel file {path} is not readable media: {exc}") from exc
    with container:
        for frame in container.decode(container.streams.audio[0]):
            # FFmpeg decodes Opus to planar float: the first plane is the (only) channel.
            if frame.format.name != "fltp":
                raise MergeError(f"channel file {path} decodes to {frame.format.name}, not fltp")
            plane = np.frombuffer(
                memoryview(frame.planes[0]), dtype=np.float32, count=frame.samples
            )
            builder.add(plane.reshape(-1, 1))
    return builder.build()
