"""Merge two mono Ogg Opus channel files into one stereo Ogg Opus file (decode, join, re-encode)."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from queue import Empty, Full, Queue

import av
import av.error
import numpy as np
from av.audio.frame import AudioFrame
from av.container import InputContainer
from av.filter import Graph
from av.filter.context import FilterContext

from mediaserver.audio.opus_encoder import MAX_COMPLEXITY, OPUS_FRAME_DURATIONS_MS, OPUS_RATE_HZ
from mediaserver.audio.peaks import PeaksBuilder
from mediaserver.errors import MergeError

# RFC 7845 §5.1: the first Ogg page of an Ogg Opus stream carries the "OpusHead" packet.
_OGG_CAPTURE_PATTERN = b"OggS"
_OGG_PAGE_HEADER_LEN = 27  # RFC 3533 §6: the segment count is the header's last byte
_OPUS_HEAD_MAGIC = b"OpusHead"
# What FFmpeg's Opus decoder produces, used to describe a channel that has no audio at all.
_DECODED_FORMAT = "fltp"
_DECODED_LAYOUT = "mono"
# The merge reads each channel once, front to back, and never seeks: the demuxer's seek index
# (up to 1 MB per stream by default, growing with the call) is kept small.
_DEMUX_OPTIONS = {"indexmem": "65536"}
# The sink hands out 100 ms blocks so the encode loop runs a Python iteration per five frames.
_SINK_FRAME_SAMPLES = 4800


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What a merge wrote: where, how long (48 kHz samples per channel), how big, how fast."""

    path: Path
    duration_samples: int
    size_bytes: int
    elapsed_s: float


def merge_stereo(
    left: Path,
    right: Path,
    out: Path,
    *,
    bitrate_bps: int = 64000,
    complexity: int = 10,
    frame_duration_ms: int = 20,
    peaks: PeaksBuilder | None = None,
) -> MergeResult:
    """Write `out` as stereo Ogg Opus with `left` on FL and `right` on FR, sample-aligned."""
    # The shorter channel is padded with silence, so the output lasts as long as the longer one.
    # Memory stays bounded whatever the length: audio streams through frame by frame.
    # `peaks`, when given, is fed every joined block on the way to the encoder: the waveform
    # costs no second decode.
    if frame_duration_ms not in OPUS_FRAME_DURATIONS_MS:
        raise MergeError(f"Opus cannot encode {frame_duration_ms} ms frames")
    if not 0 <= complexity <= MAX_COMPLEXITY:
        raise MergeError(f"Opus complexity must be 0..{MAX_COMPLEXITY}, got {complexity}")
    started_s = time.perf_counter()
    # Written under a temporary name, so a failed merge never leaves a plausible-looking file.
    partial = out.with_name(out.name + ".part")
    sources: list[_ChannelSource] = []
    try:
        sources.append(_ChannelSource.open(left, "left"))
        sources.append(_ChannelSource.open(right, "right"))
        duration_samples = _write_merged(
            _JoinGraph.build(sources[0], sources[1]),
            partial,
            bitrate_bps=bitrate_bps,
            complexity=complexity,
            frame_duration_ms=frame_duration_ms,
            peaks=peaks,
        )
        os.replace(partial, out)
    except av.error.FFmpegError as exc:
        raise MergeError(f"merging {left} and {right} failed: {exc}") from exc
    finally:
        for source in sources:
            source.close()
        partial.unlink(missing_ok=True)
    return MergeResult(
        path=out,
        duration_samples=duration_samples,
        size_bytes=out.stat().st_size,
        elapsed_s=time.perf_counter() - started_s,
    )


class _ChannelSource:
    """One input channel file: its decoded frames, or none for a header-only file."""

    def __init__(self, name: str, container: InputContainer | None) -> None:
        self.name = name
        self._container = container

    @classmethod
    def open(cls, path: Path, name: str) -> _ChannelSource:
        """Open `path` for decoding, or raise MergeError saying why it is not Opus audio."""
        if not path.is_file():
            raise MergeError(f"{name} channel file {path} does not exist")
        try:
            container = av.open(str(path), "r", options=_DEMUX_OPTIONS)
        except av.error.EOFError as exc:
            # FFmpeg cannot probe a stream that ends right after its headers; such a file is
            # an empty channel (nobody spoke), not a broken one.
            if _starts_with_opus_head(path):
                return cls(name, None)
            raise MergeError(f"{name} channel file {path} ends before any audio") from exc
        except av.error.FFmpegError as exc:
            raise MergeError(f"{name} channel file {path} is not readable media: {exc}") from exc
        if not container.streams.audio:
            container.close()
            raise MergeError(f"{name} channel file {path} has no audio stream")
        codec_name = container.streams.audio[0].codec_context.name
        if codec_name != "opus":
            container.close()
            raise MergeError(f"{name} channel file {path} holds {codec_name} audio, not Opus")
        return cls(name, container)

    def frames(self) -> Iterator[AudioFrame]:
        """Decode the channel frame by frame, pre-skip and end trimming already applied."""
        if self._container is None:
            return
        yield from self._container.decode(self._container.streams.audio[0])

    def close(self) -> None:
        """Release the demuxer and decoder."""
        if self._container is not None:
            self._container.close()


def _starts_with_opus_head(path: Path) -> bool:
    """Whether the file's first Ogg page carries an OpusHead packet (RFC 7845 §5.1)."""
    with path.open("rb") as file:
        page_header = file.read(_OGG_PAGE_HEADER_LEN)
        if len(page_header) < _OGG_PAGE_HEADER_LEN or page_header[:4] != _OGG_CAPTURE_PATTERN:
            return False
        file.seek(page_header[-1], os.SEEK_CUR)  # skip the lacing values
        return file.read(len(_OPUS_HEAD_MAGIC)) == _OPUS_HEAD_MAGIC


@dataclass(slots=True)
class _GraphInput:
    """One join input: its decoded frames, its buffer source and the samples pushed so far."""

    # FFmpeg's Opus decoder always outputs 48 kHz, so positions are plain 48 kHz sample counts.

    frames: Iterator[AudioFrame]
    buffer: FilterContext
    format_name: str
    layout_name: str
    pushed_samples: int = 0
    exhausted: bool = False

    def push(self, frame: AudioFrame) -> None:
        """Push a frame stamped with its place in the channel, so pts jumps cannot shift it."""
        frame.pts = self.pushed_samples
        self.buffer.push(frame)
        self.pushed_samples += frame.samples

    def push_silence(self, samples: int) -> None:
        """Push `samples` of digital silence in the input's own format."""
        if samples <= 0:
            return
        frame = AudioFrame(format=self.format_name, layout=self.layout_name, samples=samples)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate = OPUS_RATE_HZ
        self.push(frame)


@dataclass(slots=True)
class _JoinGraph:
    """abuffer (x2) → aresample → join (FL, FR) → aformat → abuffersink, and its two ends."""

    # Filter contexts refer to their graph only weakly, so this object keeps the graph alive.

    graph: Graph
    left: _GraphInput
    right: _GraphInput
    sink: FilterContext
    pulled_samples: int = 0

    @classmethod
    def build(cls, left: _ChannelSource, right: _ChannelSource) -> _JoinGraph:
        """Wire the graph for two channel sources and configure it."""
        graph = Graph()
        inputs = (_add_input(graph, left), _add_input(graph, right))
        join = graph.add("join", "inputs=2:channel_layout=stereo:map=0.0-FL|1.0-FR")
        for index, graph_input in enumerate(inputs):
            # Downmixing to mono keeps "channel 0" meaningful if a channel file is ever stereo.
            resample = graph.add("aresample", f"{OPUS_RATE_HZ}:ochl=mono")
            graph_input.buffer.link_to(resample)
            resample.link_to(join, input_idx=index)
        # libopus takes interleaved samples; converting here spares PyAV's converter the work.
        aformat = graph.add("aformat", f"sample_fmts=flt:sample_rates={OPUS_RATE_HZ}")
        sink = graph.add("abuffersink")
        join.link_to(aformat)
        aformat.link_to(sink)
        graph.configure()
        graph.set_audio_frame_size(_SINK_FRAME_SAMPLES)
        return cls(graph, inputs[0], inputs[1], sink)

    def blocks(self) -> Iterator[AudioFrame]:
        """Feed both inputs in step and yield stereo blocks as join emits them."""
        left, right = self.left, self.right
        while not (left.exhausted and right.exhausted):
            # Feeding whichever input is behind keeps join's queue to about a frame per input.
            behind, ahead = (
                (left, right) if left.pushed_samples < right.pushed_samples else (right, left)
            )
            if behind.exhausted:
                behind, ahead = ahead, behind
            frame = next(behind.frames, None)
            if frame is None:
                behind.exhausted = True
                continue
            behind.push(frame)
            if ahead.exhausted:
                # The shorter channel has ended: pad it with silence to keep join moving.
                ahead.push_silence(behind.pushed_samples - ahead.pushed_samples)
            # Pull only once a whole block can be ready: a pull that finds nothing costs an
            # exception, and there are ten input frames per block.
            ready_samples = min(left.pushed_samples, right.pushed_samples) - self.pulled_samples
            if ready_samples >= _SINK_FRAME_SAMPLES:
                yield from self._drain()
        if left.pushed_samples == right.pushed_samples == 0:
            # Two channels without audio: FFmpeg's muxer cannot write an Ogg Opus stream
            # without packets that opusinfo accepts, so the output gets one silent sample.
            left.push_silence(1)
        left.push_silence(right.pushed_samples - left.pushed_samples)
        right.push_silence(left.pushed_samples - right.pushed_samples)
        left.buffer.push(None)
        right.buffer.push(None)
        yield from self._drain()

    def _drain(self) -> Iterator[AudioFrame]:
        """Yield every block the sink has ready now."""
        while True:
            try:
                frame = self.sink.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            assert isinstance(frame, AudioFrame)
            self.pulled_samples += frame.samples
            yield frame


def _add_input(graph: Graph, source: _ChannelSource) -> _GraphInput:
    """Add a buffer source shaped like the channel's first decoded frame."""
    frames = source.frames()
    first = next(frames, None)
    if first is None:
        format_name, layout_name = _DECODED_FORMAT, _DECODED_LAYOUT
    elif first.sample_rate != OPUS_RATE_HZ:
        raise MergeError(f"{source.name} channel decodes at {first.sample_rate} Hz, not 48 kHz")
    else:
        format_name, layout_name = first.format.name, first.layout.name
        frames = itertools.chain((first,), frames)
    buffer = graph.add_abuffer(
        sample_rate=OPUS_RATE_HZ,
        format=format_name,
        layout=layout_name,
        time_base=Fraction(1, OPUS_RATE_HZ),
        name=source.name,
    )
    return _GraphInput(frames, buffer, format_name, layout_name)


def _write_merged(
    join_graph: _JoinGraph,
    path: Path,
    *,
    bitrate_bps: int,
    complexity: int,
    frame_duration_ms: int,
    peaks: PeaksBuilder | None,
) -> int:
    """Encode the joined stereo blocks with libopus into Ogg; return the samples written."""
    with av.open(str(path), "w", format="ogg") as container:
        # "libopus" by name: "opus" would pick FFmpeg's own, experimental encoder.
        stream = container.add_stream("libopus", rate=OPUS_RATE_HZ, layout="stereo")
        stream.bit_rate = bitrate_bps
        stream.codec_context.options = {
            "compression_level": str(complexity),
            "frame_duration": str(frame_duration_ms),
        }
        written_samples = 0
        blocks = join_graph.blocks()
        if peaks is not None:
            blocks = _feed_peaks(blocks, peaks)  # runs in the decode thread, beside the encoder
        for block in _prefetch(blocks):
            written_samples += block.samples
            container.mux(stream.encode(block))
        container.mux(stream.encode(None))
    return written_samples


def _feed_peaks(blocks: Iterator[AudioFrame], peaks: PeaksBuilder) -> Iterator[AudioFrame]:
    """Hand each interleaved float stereo block to the peaks builder, then pass it on."""
    for block in blocks:
        # aformat made the blocks packed float: one plane of (left, right) sample pairs.
        peaks.add(np.asarray(block.to_ndarray(), dtype=np.float32).reshape(-1, 2))
        yield block


_DONE = object()
PREFETCH_BLOCKS = 32  # 100 ms blocks: ~3 s of stereo float, a few MB at most


def _prefetch(blocks: Iterator[AudioFrame]) -> Iterator[AudioFrame]:
    """Decode and join in a second thread while this one encodes."""
    # libopus encoding, two thirds of the work, runs with the GIL released (PyAV's
    # avcodec_send_frame/receive_packet are nogil), so the two stages overlap on two cores.
    queue: Queue[object] = Queue(maxsize=PREFETCH_BLOCKS)
    failure: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        try:
            for block in blocks:
                while not stop.is_set():
                    try:
                        queue.put(block, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            failure.append(exc)
        finally:
            queue.put(_DONE)

    producer = threading.Thread(target=produce, name="merge-decode", daemon=True)
    producer.start()
    try:
        while (item := queue.get()) is not _DONE:
            assert isinstance(item, AudioFrame)
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()
        while producer.is_alive():
            try:
                queue.get_nowait()
            except Empty:
                producer.join(timeout=0.1)
