"""libopus through ctypes, for the live path: decoding to and encoding from the agent's rate."""

# Through PyAV, a 20 ms Opus decode plus the resampling to the agent's 8 kHz costs ~75 µs and an
# encode ~70 µs, most of it conversion and frame bookkeeping around the codec; calling libopus
# itself costs ~22 µs each (bench_agent_capacity.py profiles it). libopus decodes to and encodes
# from 8/12/16/24/48 kHz natively (RFC 6716 §2), so the agent's audio is never resampled.
# The library is the copy PyAV's wheel carries (pinned with PyAV: libopus 1.6 in av 18), or else
# the system's libopus0: at 8 kHz the wheel's 1.6 encodes in ~29 µs where Debian's 1.3 takes
# ~48 µs, and decodes in ~31 µs against ~41 µs (bench_agent_path.py prints each build's cost).

import ctypes
import ctypes.util
from functools import cache
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from mediaserver.errors import OpusPacketError

# opus_defines.h
_OPUS_OK = 0
_RESET_STATE = 4028  # the ctl that forgets all history (decoder and encoder)
_APPLICATION_VOIP = 2048
_SET_BITRATE_REQUEST = 4002
_SET_COMPLEXITY_REQUEST = 4010
_SET_INBAND_FEC_REQUEST = 4012
_SET_SIGNAL_REQUEST = 4024
_SIGNAL_VOICE = 3001
# RFC 6716 §2: the sample rates libopus encodes from and decodes to.
OPUS_RATES_HZ = (8000, 12000, 16000, 24000, 48000)
# RFC 6716 §3.2.5: a packet holds at most 120 ms of audio.
_MAX_PACKET_MS = 120
_MAX_PACKET_BYTES = 1500  # one datagram

Pcm = npt.NDArray[np.int16]


def libopus_candidates() -> list[str]:
    """The libopus builds this process can load, preferred first: PyAV's copy, the system's."""
    bundled = Path(av.__file__).parent.parent / "av.libs"
    candidates = [str(p) for p in sorted(bundled.glob("libopus*.so*"))]
    found = ctypes.util.find_library("opus")
    if found:
        candidates.append(found)
    return candidates


def open_libopus(name: str) -> ctypes.CDLL:
    """One libopus build, with the signatures used here declared; OSError if it cannot load."""
    lib = ctypes.CDLL(name)
    _declare(lib)
    return lib


def libopus_version(lib: ctypes.CDLL) -> str:
    """The build's own version string, e.g. "libopus 1.6.1"."""
    return bytes(lib.opus_get_version_string()).decode("ascii", "replace")


@cache
def load_libopus() -> ctypes.CDLL:
    """The preferred libopus build this process can load."""
    for name in libopus_candidates():
        try:
            return open_libopus(name)
        except OSError:
            continue
    raise OSError("libopus not found: install libopus0 (Debian) or PyAV's wheel")


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of the functions called (opus.h)."""
    c_int_p = ctypes.POINTER(ctypes.c_int)
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, c_int_p]
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decoder_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.opus_decoder_ctl.restype = ctypes.c_int
    lib.opus_decode.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, c_int_p]
    lib.opus_encoder_create.restype = ctypes.c_void_p
    lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_encode.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,  # the int16 samples as bytes: cheaper to pass than an array's address
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int32,
    ]
    lib.opus_encode.restype = ctypes.c_int32
    lib.opus_get_version_string.argtypes = []
    lib.opus_get_version_string.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [ctypes.c_int]
    lib.opus_strerror.restype = ctypes.c_char_p


def _error(lib: ctypes.CDLL, code: int) -> str:
    """libopus's text for an error code."""
    return bytes(lib.opus_strerror(code)).decode("ascii", "replace")


class OpusDecoder:
    """A mono Opus decoder whose output is int16 PCM at `rate_hz`."""

    def __init__(self, rate_hz: int, *, lib: ctypes.CDLL | None = None) -> None:
        if rate_hz not in OPUS_RATES_HZ:
            raise ValueError(f"Opus cannot decode to {rate_hz} Hz")
        self._lib = lib or load_libopus()
        error = ctypes.c_int()
        self._state = self._lib.opus_decoder_create(rate_hz, 1, ctypes.byref(error))
        if error.value != _OPUS_OK or not self._state:
            raise OSError(f"opus_decoder_create failed: {_error(self._lib, error.value)}")
        self.rate_hz = rate_hz
        self._max_samples = rate_hz * _MAX_PACKET_MS // 1000
        self._out = np.zeros(self._max_samples, np.int16)
        self._out_pointer = self._out.ctypes.data

    @property
    def max_packet_samples(self) -> int:
        """Samples of the longest packet (120 ms) at this rate."""
        return self._max_samples

    def decode(self, payload: bytes) -> Pcm:
        """Decode one packet; a packet libopus rejects is an OpusPacketError."""
        count = self._lib.opus_decode(
            self._state, payload, len(payload), self._out_pointer, self._max_samples, 0
        )
        if count < 0:
            raise OpusPacketError(f"Opus payload does not decode: {_error(self._lib, count)}")
        return self._out[:count].copy()

    def decode_into(self, payload: bytes, out: Pcm, offset: int) -> int:
        """Decode one packet into `out[offset:]` (room for max_packet_samples); samples written."""
        if out.size - offset < self._max_samples or not out.flags.c_contiguous:
            raise ValueError("the output has no room for the longest packet")
        address = out.ctypes.data + offset * out.itemsize
        count: int = self._lib.opus_decode(
            self._state, payload, len(payload), address, self._max_samples, 0
        )
        if count < 0:
            raise OpusPacketError(f"Opus payload does not decode: {_error(self._lib, count)}")
        return count

    def reset(self) -> None:
        """Forget the decoder's history, as after a stream restart."""
        self._lib.opus_decoder_ctl(self._state, _RESET_STATE)

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.opus_decoder_destroy(state)


class OpusFrameEncoder:
    """A mono VoIP Opus encoder taking exactly one frame of int16 PCM at `rate_hz` per call."""

    def __init__(
        self,
        rate_hz: int,
        *,
        frame_ms: int = 20,
        bitrate_bps: int = 32000,
        complexity: int = 0,
        lib: ctypes.CDLL | None = None,
    ) -> None:
        if rate_hz not in OPUS_RATES_HZ:
            raise ValueError(f"Opus cannot encode from {rate_hz} Hz")
        if not 0 <= complexity <= 10:
            raise ValueError(f"Opus complexity must be 0..10, got {complexity}")
        self._lib = lib or load_libopus()
        error = ctypes.c_int()
        self._state = self._lib.opus_encoder_create(
            rate_hz, 1, _APPLICATION_VOIP, ctypes.byref(error)
        )
        if error.value != _OPUS_OK or not self._state:
            raise OSError(f"opus_encoder_create failed: {_error(self._lib, error.value)}")
        for request, value in (
            (_SET_BITRATE_REQUEST, bitrate_bps),
            (_SET_COMPLEXITY_REQUEST, complexity),
            (_SET_SIGNAL_REQUEST, _SIGNAL_VOICE),
            (_SET_INBAND_FEC_REQUEST, 0),
        ):
            result = self._lib.opus_encoder_ctl(
                ctypes.c_void_p(self._state), ctypes.c_int(request), ctypes.c_int(value)
            )
            if result != _OPUS_OK:
                raise OSError(f"opus_encoder_ctl({request}) failed: {_error(self._lib, result)}")
        self.frame_samples = rate_hz * frame_ms // 1000
        self._out = ctypes.create_string_buffer(_MAX_PACKET_BYTES)

    def encode(self, pcm: Pcm) -> bytes:
        """Encode exactly one frame."""
        if pcm.size != self.frame_samples or pcm.dtype != np.int16:
            raise ValueError(f"expected {self.frame_samples} int16 samples, got {pcm.size}")
        size = self._lib.opus_encode(
            self._state, pcm.tobytes(), self.frame_samples, self._out, _MAX_PACKET_BYTES
        )
        if size < 0:
            raise OSError(f"opus_encode failed: {_error(self._lib, size)}")
        return self._out.raw[:size]

    def reset(self) -> None:
        """Forget the audio encoded so far (OPUS_RESET_STATE): the next frame starts afresh."""
        result = self._lib.opus_encoder_ctl(
            ctypes.c_void_p(self._state), ctypes.c_int(_RESET_STATE)
        )
        if result != _OPUS_OK:
            raise OSError(f"opus_encoder_ctl(RESET_STATE) failed: {_error(self._lib, result)}")

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.opus_encoder_destroy(state)
