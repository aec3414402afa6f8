"""One channel file's speech: decode the Ogg Opus file and find its speech (a worker's task)."""

from pathlib import Path

from mediaserver.analysis.vad import Span, SpeechDetector, VadConfig
from mediaserver.audio.opus_decoder import decode_ogg_opus_file


def detect_file_speech(path: Path, config: VadConfig) -> tuple[list[Span], float]:
    """Speech spans of a mono Ogg Opus file and its duration in seconds (CPU-bound)."""
    detector = SpeechDetector(config)
    for block in decode_ogg_opus_file(path, config.sample_rate_hz):
        detector.feed(block)
    return detector.finish(), detector.samples / config.sample_rate_hz
