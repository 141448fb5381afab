"""Streaming resampler: LiveKit int16 frames (mono or stereo) → 16 kHz mono int16 PCM.

Rational-ratio polyphase FIR resampling in numpy. The prototype low-pass is a Kaiser-windowed sinc designed
for 70 dB stopband rejection from 8 kHz (the output Nyquist; 69.5 dB at the edge itself, more beyond) with a
flat passband to 7 kHz (±0.003 dB), so nothing above 8 kHz aliases into the output above -69 dBFS. The
filter delays the stream by about 2.2 ms (half its length), which ``flush()`` gives back at the end.
Output sample ``n`` sits at time ``n / 16000`` s, exactly aligned with the input (the filter's delay is
compensated), which makes the output identical to a one-shot linear-phase resampling of the whole signal
(``scipy.signal.resample_poly`` with the same taps), however it is framed.

Output length rule (exact, no drift over any number of calls):

* after ``process()`` calls totalling ``n_in`` input samples per channel, the total output so far is
  ``max(0, (n_in * up - 1 - delay) // down + 1)``: every output sample whose filter window is complete
  (see :meth:`StreamingResampler.expected_output`);
* ``flush()`` then emits the tail held back by the filter delay, so that the total output is exactly
  ``ceil(n_in * 16000 / input_rate)``: one output sample per output instant inside the input's span. This is
  the same count ``scipy.signal.resample_poly`` returns. ``flush()`` also resets the stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

OUTPUT_RATE = 16000
SUPPORTED_RATES = (48000, 44100, 32000, 24000, 16000)
SUPPORTED_CHANNELS = (1, 2)

#: Design targets of the anti-aliasing filter.
PASSBAND_EDGE_HZ = 7000.0
STOPBAND_EDGE_HZ = 8000.0
STOPBAND_DB = 70.0

#: Largest number of output samples computed in one vectorised block (bounds memory on long inputs).
_CHUNK = 4096
#: Up to this many phases, each phase is one strided matrix-vector product; beyond, a dense block matrix.
_FEW_PHASES = 4

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


@dataclass(frozen=True)
class PolyphaseFilter:
    """A polyphase decomposition of a Kaiser-windowed-sinc low-pass for ``input_rate`` → 16 kHz.

    Output ``n`` is ``sum_j bank[r, j] * x[(n // up) * down + offset[r] - (taps_per_phase - 1) + j]`` with
    ``r = n % up`` (the window is read oldest sample first, so the bank rows are time-reversed).
    """

    input_rate: int
    up: int
    down: int
    #: The prototype filter at ``input_rate * up`` Hz (odd length, linear phase, DC gain ``up``, every
    #: polyphase component summing to exactly 1).
    taps: Float64Array
    #: Group delay of ``taps`` in prototype-rate samples: ``(len(taps) - 1) // 2``.
    delay: int
    taps_per_phase: int
    #: ``up`` rows, one per output index modulo ``up``, each time-reversed and summing to exactly 1.
    bank: Float32Array
    #: For output index ``r`` (mod ``up``): newest input index used, relative to ``(n // up) * down``.
    offset: IntArray
    #: ``offset`` as Python ints (cheaper to index per call).
    offsets: tuple[int, ...]
    #: Outputs computed per vectorised block (with many phases: ``up``).
    chunk: int
    #: With many phases (``up > _FEW_PHASES``), outputs ``m`` in ``0 .. 2 * up - 1`` as one dense matrix
    #: over the input: row ``m`` holds ``bank[m % up]`` from column ``offset_tab[m]``, where column ``c``
    #: reads input ``c - (taps_per_phase - 1)`` (relative to the block's first input); any ``up``
    #: consecutive outputs are then one sub-matrix times a contiguous stretch of input.
    offset_tab: tuple[int, ...]
    dense: Float32Array


def _kaiser_beta(attenuation_db: float) -> float:
    """Kaiser's empirical window parameter for a given stopband attenuation."""
    if attenuation_db > 50:
        return 0.1102 * (attenuation_db - 8.7)
    if attenuation_db >= 21:
        return float(0.5842 * (attenuation_db - 21) ** 0.4 + 0.07886 * (attenuation_db - 21))
    return 0.0


@cache
def design_filter(input_rate: int) -> PolyphaseFilter:
    """Design (once per rate, cached) the polyphase anti-aliasing filter for ``input_rate`` → 16 kHz."""
    _check_rate(input_rate)
    g = math.gcd(input_rate, OUTPUT_RATE)
    up, down = OUTPUT_RATE // g, input_rate // g
    proto_rate = float(input_rate * up)
    # Kaiser's length estimate for the transition band PASSBAND_EDGE_HZ..STOPBAND_EDGE_HZ.
    transition = 2 * math.pi * (STOPBAND_EDGE_HZ - PASSBAND_EDGE_HZ) / proto_rate
    n_min = math.ceil((STOPBAND_DB - 7.95) / (2.285 * transition)) + 1
    taps_per_phase = math.ceil(n_min / up)
    length = taps_per_phase * up
    if length % 2 == 0:
        length -= 1  # odd length: an integer group delay; the last phase gets a zero tap
    delay = (length - 1) // 2
    cutoff = (PASSBAND_EDGE_HZ + STOPBAND_EDGE_HZ) / 2 / proto_rate  # cycles per prototype sample
    k = np.arange(length, dtype=np.float64) - delay
    taps = 2 * cutoff * np.sinc(2 * cutoff * k) * np.kaiser(length, _kaiser_beta(STOPBAND_DB))
    taps *= up / taps.sum()

    padded = np.zeros(taps_per_phase * up, dtype=np.float64)
    padded[:length] = taps
    phases = padded.reshape(taps_per_phase, up).T  # phases[p, j] = taps[p + j * up]
    # Each phase sums to exactly 1, so DC passes without a periodic (phase-dependent) error.
    phases = phases / phases.sum(axis=1, keepdims=True)
    taps = phases.T.reshape(-1)[:length]  # the prototype actually used (sums to up)
    r = np.arange(up)
    centre = r * down + delay  # prototype-rate index of output r's instant, delay compensated
    bank = np.ascontiguousarray(phases[centre % up, ::-1], dtype=np.float32)
    offset = (centre // up).astype(np.intp)
    chunk = _CHUNK if up <= _FEW_PHASES else up
    m = np.arange(2 * up if up > _FEW_PHASES else 0)
    offset_tab = (m // up) * down + offset[m % up]
    dense = np.zeros((len(m), int(offset_tab[-1]) + taps_per_phase if len(m) else 0), dtype=np.float32)
    dense[m[:, None], offset_tab[:, None] + np.arange(taps_per_phase)] = bank[m % up]
    for array in (taps, bank, offset, dense):
        array.flags.writeable = False
    return PolyphaseFilter(
        input_rate,
        up,
        down,
        taps,
        delay,
        taps_per_phase,
        bank,
        offset,
        tuple(int(o) for o in offset),
        chunk,
        tuple(int(o) for o in offset_tab),
        dense,
    )


def _check_rate(input_rate: int) -> None:
    if input_rate not in SUPPORTED_RATES:
        rates = ", ".join(str(rate) for rate in SUPPORTED_RATES)
        raise ValueError(f"unsupported input sample rate {input_rate} Hz (supported: {rates})")


class StreamingResampler:
    """Resample a stream of interleaved int16 frames to 16 kHz mono int16, carrying state across calls.

    Stereo is downmixed by averaging the two channels. 16 kHz mono input is copied through unchanged.
    Not thread-safe; one instance per stream.
    """

    def __init__(self, input_rate: int, input_channels: int = 1) -> None:
        _check_rate(input_rate)
        if input_channels not in SUPPORTED_CHANNELS:
            raise ValueError(f"unsupported channel count {input_channels} (supported: 1 or 2)")
        self.input_rate = input_rate
        self.input_channels = input_channels
        self._filter = design_filter(input_rate) if input_rate != OUTPUT_RATE else None
        self._store: Float32Array = np.zeros(0, dtype=np.float32)
        self._reset()

    def _reset(self) -> None:
        history = self._filter.taps_per_phase - 1 if self._filter is not None else 0
        # Input samples (mono, float32) still needed are _store[_lo:_hi]; _store[_lo] is input index _start.
        if self._store.shape[0] < history + _CHUNK:
            self._store = np.zeros(history + _CHUNK, dtype=np.float32)
        self._store[:history] = 0.0
        self._lo, self._hi = 0, history
        self._start = -history
        self._n_in = 0
        self._n_out = 0

    @property
    def samples_in(self) -> int:
        """Input samples per channel taken since the start (or the last flush)."""
        return self._n_in

    @property
    def samples_out(self) -> int:
        """Output samples emitted since the start (or the last flush)."""
        return self._n_out

    def expected_output(self, samples_in: int) -> int:
        """Total output ``process()`` has emitted once ``samples_in`` samples per channel went in."""
        f = self._filter
        if f is None:
            return samples_in
        return max(0, (samples_in * f.up - 1 - f.delay) // f.down + 1)

    def process(self, samples: Int16Array) -> Int16Array:
        """Take interleaved int16 samples; return the 16 kHz mono int16 samples now complete (maybe none)."""
        if type(samples) is not np.ndarray:
            samples = np.asarray(samples)
        if samples.dtype != np.int16:
            raise TypeError(f"expected int16 samples, got {samples.dtype}")
        if samples.ndim != 1:
            samples = samples.reshape(-1)
        stereo = self.input_channels == 2
        if stereo and samples.shape[0] % 2:
            raise ValueError(
                f"stereo input needs an even number of interleaved samples, got {samples.shape[0]}"
            )
        n = samples.shape[0] // self.input_channels
        self._n_in += n
        if self._filter is None:
            self._n_out += n
            if not stereo:
                return samples.copy()
            pairs = samples.reshape(-1, 2).astype(np.float32)
            return _to_int16((pairs[:, 0] + pairs[:, 1]) * np.float32(0.5))
        if n:
            hi = self._hi + n
            if hi <= self._store.shape[0]:
                dest = self._store[self._hi : hi]
                self._hi = hi
            else:
                dest = self._reserve(n)
            if stereo:
                dest[:] = samples[0::2]
                dest += samples[1::2]
                dest *= np.float32(0.5)
            else:
                dest[:] = samples
        f = self._filter
        return self._emit(max(0, (self._n_in * f.up - 1 - f.delay) // f.down + 1))

    def flush(self) -> Int16Array:
        """Emit the tail held back by the filter delay (the input is taken to end here), then reset.

        After it, the stream's total output is exactly ``ceil(samples_in * 16000 / input_rate)``.
        """
        f = self._filter
        if f is None:
            self._reset()
            return np.zeros(0, dtype=np.int16)
        target = -(-self._n_in * f.up // f.down)
        if target > self._n_out:
            # Zeros after the end of the input, up to the newest sample the last output reads.
            q, r = divmod(target - 1, f.up)
            newest = q * f.down + f.offsets[r]
            missing = newest + 1 - (self._start + self._hi - self._lo)
            if missing > 0:
                self._reserve(missing)[:] = 0.0
        out = self._emit(target)
        self._reset()
        return out

    def _reserve(self, n: int) -> Float32Array:
        """Make room for ``n`` more input samples at the end of the buffer and return that slice."""
        if self._hi + n > self._store.shape[0]:
            kept = self._hi - self._lo
            if kept + n > self._store.shape[0]:
                grown = np.zeros(max(2 * self._store.shape[0], kept + n), dtype=np.float32)
                grown[:kept] = self._store[self._lo : self._hi]
                self._store = grown
            else:
                self._store[:kept] = self._store[self._lo : self._hi]
            self._lo, self._hi = 0, kept
        dest = self._store[self._hi : self._hi + n]
        self._hi += n
        return dest

    def _emit(self, end: int) -> Int16Array:
        """Compute outputs ``_n_out .. end - 1`` from the buffer, then drop the input no longer needed."""
        f = self._filter
        assert f is not None
        start = self._n_out
        if end <= start:
            return np.zeros(0, dtype=np.int16)
        k = f.taps_per_phase
        buf = self._store[self._lo : self._hi]
        # windows[s] = buf[s : s + k] (a strided view, no copy); input index i is buf[i - _start].
        windows: Float32Array = np.ndarray(
            (buf.shape[0] - k + 1, k), np.float32, buf, 0, (buf.strides[0], buf.strides[0])
        )
        base = 1 - k - self._start  # window index ending at input index i is i + base
        step = f.chunk
        if f.up == 1 and end - start <= step:  # the common case (48 and 32 kHz), inlined
            first = start * f.down + f.offsets[0] + base
            y = np.dot(windows[first : first + (end - start - 1) * f.down + 1 : f.down], f.bank[0])
        elif end - start <= step:
            y = self._block(buf, windows, base, start, end)
        else:
            y = np.concatenate(
                [self._block(buf, windows, base, lo, min(end, lo + step)) for lo in range(start, end, step)]
            )
        self._n_out = end
        # The next output reads from this input index on.
        q, r = divmod(end, f.up)
        keep_from = q * f.down + f.offsets[r] - (k - 1)
        drop = keep_from - self._start
        if drop > 0:
            self._lo += drop
            self._start = keep_from
        return _to_int16(y)

    def _block(self, buf: Float32Array, windows: Float32Array, base: int, lo: int, hi: int) -> Float32Array:
        """Outputs ``lo .. hi - 1`` (at most ``chunk``) as float32; ``windows[s]`` is ``buf[s : s + k]``."""
        f = self._filter
        assert f is not None
        up, down = f.up, f.down
        if up == 1:
            first = lo * down + f.offsets[0] + base
            y1: Float32Array = np.dot(windows[first : first + (hi - lo - 1) * down + 1 : down], f.bank[0])
            return y1
        if up <= _FEW_PHASES:
            # One strided matrix-vector product per phase, interleaved into the output.
            y = np.empty(hi - lo, dtype=np.float32)
            for r in range(up):
                n = lo + (r - lo) % up  # the first output of phase r
                if n >= hi:
                    continue
                first = n // up * down + f.offsets[r] + base
                count = (hi - n + up - 1) // up
                y[n - lo :: up] = np.dot(windows[first : first + (count - 1) * down + 1 : down], f.bank[r])
            return y
        # Many phases: one dense sub-matrix times the stretch of input these outputs read.
        q, r0 = divmod(lo, up)
        c0 = f.offset_tab[r0]
        c1 = f.offset_tab[r0 + hi - lo - 1] + f.taps_per_phase
        at = q * down + base
        y_dense: Float32Array = f.dense[r0 : r0 + hi - lo, c0:c1] @ buf[at + c0 : at + c1]
        return y_dense


def _to_int16(y: Float32Array) -> Int16Array:
    """Round to nearest (ties to even) and saturate to the int16 range."""
    rounded = np.rint(y)
    np.minimum(rounded, 32767.0, out=rounded)
    np.maximum(rounded, -32768.0, out=rounded)
    return rounded.astype(np.int16)
