"""Ogg Opus files cut into valid pieces without re-encoding: by size, and by time span."""

import itertools
from pathlib import Path

import numpy as np
import pytest

from mediaserver.audio.ogg_opus_cut import cut_ogg_opus_file, split_ogg_opus_file
from mediaserver.audio.ogg_opus_writer import OggOpusWriter
from mediaserver.audio.opus_toc import compute_packet_samples

from audio_oracle import assert_valid_opus, decode_ogg, encode_tone_packets

RATE_HZ = 48000


def _tone_file(path: Path, seconds: float, pre_skip: int = 960) -> None:
    packets = encode_tone_packets(700.0, seconds, flush=False)
    with path.open("wb") as out:
        writer = OggOpusWriter(out, channel_count=1, pre_skip_samples=pre_skip)
        for packet in packets:
            writer.write_packet(packet, compute_packet_samples(packet))
        writer.close()


def test_split_pieces_are_valid_small_enough_and_cover_the_file(tmp_path: Path) -> None:
    """10 s in pieces of at most 12 KB: each passes opusinfo; offsets and durations add up."""
    source = tmp_path / "channel.opus"
    _tone_file(source, 10.0)
    pieces = split_ogg_opus_file(source, tmp_path, max_bytes=12_000)
    assert len(pieces) >= 3
    for piece in pieces:
        assert piece.path.suffix == ".ogg"
        assert piece.path.stat().st_size <= 12_000
        assert_valid_opus(piece.path)
    assert pieces[0].offset_s == 0.0
    for before, after in itertools.pairwise(pieces):
        assert after.offset_s == pytest.approx(before.offset_s + before.duration_s)
    total_s = pieces[-1].offset_s + pieces[-1].duration_s
    assert total_s == pytest.approx(10.0 - 960 / RATE_HZ, abs=0.001)
    decoded_s = sum(decode_ogg(p.path).shape[1] for p in pieces) / RATE_HZ
    assert decoded_s == pytest.approx(total_s, abs=0.001)


def test_cut_by_span_takes_the_packets_that_overlap(tmp_path: Path) -> None:
    """A 1.00-1.50 s span of a 20 ms packet stream is 25 packets starting at 1.00 s."""
    source = tmp_path / "channel.opus"
    _tone_file(source, 4.0)
    [piece, other] = cut_ogg_opus_file(source, [(1.0, 1.5), (2.01, 2.05)], tmp_path)
    assert piece.offset_s == pytest.approx(1.0)
    assert piece.duration_s == pytest.approx(0.5)
    assert other.offset_s == pytest.approx(2.0)
    assert other.duration_s == pytest.approx(0.06)  # 2.00-2.06: three packets overlap
    audio = decode_ogg(piece.path)
    assert audio.shape[1] == pytest.approx(0.5 * RATE_HZ, abs=1)
    assert float(np.abs(audio).max()) > 0.1


def test_a_limit_too_small_for_any_piece_is_refused(tmp_path: Path) -> None:
    """No piece can be smaller than its headers."""
    source = tmp_path / "channel.opus"
    _tone_file(source, 1.0)
    with pytest.raises(ValueError, match="cannot hold"):
        split_ogg_opus_file(source, tmp_path, max_bytes=500)
