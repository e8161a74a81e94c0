"""The waveform augmentation chain, batched: every row gets its own random draws.

CLMR's chain (polarity, noise, gain, high/low-pass, delay, reverb, pitch) with the
project's defaults: noise is applied often and strongly (white, pink or brown at 5-30 dB
SNR), gain spans -20..+6 dB, and a time stretch changes tempo without changing pitch. The
CLMR values are in :data:`CLMR`.

Each augmentation is applied to a row with its own probability (CLMR's RandomApply) and
draws its parameters per row from one ``torch.Generator`` seeded by the caller, so a
batch's augmentation is a pure function of (waveforms, seed). Heavy work runs only on the
rows an augmentation picked, as batched FFT / gather ops (the time stretch runs row by row).

Order: time stretch and pitch shift first (they need the longer input crop; the pitch shift
returns ``out_samples``), then polarity, gain, high/low-pass, delay, reverb, and noise last
(the noise of a recording is not filtered or reverberated with the music).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

FILTER_ORDER = 8  # Butterworth magnitude order of the zero-phase high/low-pass (48 dB/octave)
FILTER_PAD = 4096  # zero padding (samples) so FFT filtering does not wrap around
STRETCH_FFT = 1024  # phase-vocoder STFT size (samples) of the time stretch; hop is a quarter
NOISE_COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # exponent a of the noise power spectrum 1/f^a


@dataclass
class AugmentConfig:
    """Probabilities and parameter ranges. Frequencies in Hz, times in seconds, levels in dB.

    ``pitch`` resamples (pitch and tempo change together, as in CLMR); ``tempo`` stretches
    time by a factor (output duration = input duration / factor) and keeps pitch.
    ``noise_colors`` are drawn uniformly per row (see :data:`NOISE_COLORS`).
    """

    pitch_p: float = 0.6
    pitch_semitones: float = 4.0
    tempo_p: float = 0.5
    tempo_range: tuple[float, float] = (0.85, 1.18)
    polarity_p: float = 0.8
    noise_p: float = 0.7
    noise_snr_db: tuple[float, float] = (5.0, 30.0)
    noise_colors: tuple[str, ...] = ("white", "pink", "brown")
    gain_p: float = 0.5
    gain_db: tuple[float, float] = (-20.0, 6.0)
    filter_p: float = 0.5
    highpass_hz: tuple[float, float] = (200.0, 1200.0)
    lowpass_hz: tuple[float, float] = (2200.0, 4000.0)
    delay_p: float = 0.3
    delay_s: tuple[float, float] = (0.2, 0.5)
    delay_volume: float = 0.5
    reverb_p: float = 0.3
    reverb_rt60_s: tuple[float, float] = (0.2, 1.0)
    reverb_wet: tuple[float, float] = (0.1, 0.5)

    def __post_init__(self) -> None:
        unknown = set(self.noise_colors) - set(NOISE_COLORS)
        if unknown or not self.noise_colors:
            raise ValueError(f"noise_colors must be a non-empty subset of {sorted(NOISE_COLORS)}, got {self.noise_colors}")
        if not 0 < self.tempo_range[0] <= self.tempo_range[1]:
            raise ValueError(f"tempo_range must be 0 < lo <= hi, got {self.tempo_range}")

    @classmethod
    def from_dict(cls, d: dict) -> AugmentConfig:
        fields = asdict(cls())
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"unknown augmentation keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(fields[k], tuple) else v for k, v in d.items()})


# CLMR's chain (Spijkervet/CLMR): no time stretch, rare and faint noise (std 1e-4..1e-2 of the
# signal's, i.e. 40-80 dB SNR, white only), attenuation only, pitch up to 7 semitones.
CLMR = AugmentConfig(pitch_semitones=7.0, tempo_p=0.0, noise_p=0.01, noise_snr_db=(40.0, 80.0),
                     noise_colors=("white",), gain_p=0.3, gain_db=(-20.0, -1.0), filter_p=0.8, reverb_p=0.6)


def next_fast_len(n: int) -> int:
    """Smallest 5-smooth number (2^a 3^b 5^c) >= n: an FFT size without large prime factors."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _uniform(lo_hi: tuple[float, float], n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


class Augmenter:
    """x (N, in_samples) -> (N, out_samples) augmented; ``in_samples(out)`` says how long the input must be."""

    def __init__(self, cfg: AugmentConfig, sample_rate: int) -> None:
        self.cfg = cfg
        self.sr = sample_rate

    def _pitch_samples(self, out_samples: int) -> int:
        """Input length (samples) the pitch shift needs for ``out_samples``: room for the fastest shift."""
        if self.cfg.pitch_p <= 0:
            return out_samples
        return math.ceil(out_samples * 2 ** (self.cfg.pitch_semitones / 12)) + 1

    def in_samples(self, out_samples: int) -> int:
        """Input length (samples) needed for ``out_samples`` outputs: room for the fastest time
        stretch followed by the fastest pitch shift."""
        need = self._pitch_samples(out_samples)
        if self.cfg.tempo_p <= 0:
            return need
        return math.ceil(need * self.cfg.tempo_range[1]) + STRETCH_FFT

    def __call__(self, x: torch.Tensor, out_samples: int, seed: int) -> torch.Tensor:
        c = self.cfg
        g = torch.Generator(device=x.device).manual_seed(seed)
        x = x.float()
        if c.tempo_p > 0:
            x = self._tempo(x, self._pitch_samples(out_samples), g)
        x = self._pitch(x, out_samples, g) if c.pitch_p > 0 else x[:, :out_samples].clone()
        x = self._apply(x, c.polarity_p, g, lambda r: -r)
        x = self._apply(x, c.gain_p, g, lambda r: self._gain(r, g))
        x = self._apply(x, c.filter_p, g, lambda r: self._filter(r, g))
        x = self._apply(x, c.delay_p, g, lambda r: self._delay(r, g))
        x = self._apply(x, c.reverb_p, g, lambda r: self._reverb(r, g))
        x = self._apply(x, c.noise_p, g, lambda r: self._noise(r, g))
        return x

    @staticmethod
    def _apply(x: torch.Tensor, p: float, g: torch.Generator, fn) -> torch.Tensor:
        """Run ``fn`` on the rows picked with probability p (always draws, so the stream stays aligned)."""
        pick = (torch.rand(x.shape[0], generator=g, device=x.device) < p).nonzero().flatten()
        if pick.numel() == 0:
            return x
        out = x.clone()
        out[pick] = fn(x[pick])
        return out

    def _pitch(self, x: torch.Tensor, out_samples: int, g: torch.Generator) -> torch.Tensor:
        """Resampling pitch shift (speed change, so tempo changes too) by U(-s, s) semitones, cropped
        to ``out_samples``: y[t] = x[t * f], f = 2^(semitones / 12), after an FFT low-pass at the new
        Nyquist for f > 1. Rows not picked are cropped unchanged."""
        n = x.shape[0]
        dev = x.device
        pick = torch.rand(n, generator=g, device=dev) < self.cfg.pitch_p
        semis = (2 * torch.rand(n, generator=g, device=dev) - 1) * self.cfg.pitch_semitones
        factor = torch.where(pick, torch.exp2(semis / 12), torch.ones_like(semis))
        up = (factor > 1).nonzero().flatten()
        if up.numel():
            x = x.clone()
            x[up] = self._fft_gain(x[up], lambda f: (f <= self.sr / 2 / factor[up, None]).float())
        pos = torch.arange(out_samples, device=dev, dtype=torch.float32) * factor[:, None]
        lo = pos.floor().long().clamp(max=x.shape[1] - 2)
        frac = pos - lo
        return torch.gather(x, 1, lo) * (1 - frac) + torch.gather(x, 1, lo + 1) * frac

    def _tempo(self, x: torch.Tensor, out_samples: int, g: torch.Generator) -> torch.Tensor:
        """Time stretch by a factor U(tempo_range) (> 1 is faster), keeping pitch, cut to
        ``out_samples``; rows not picked are cut unchanged. A phase vocoder batched over rows
        with a rate of their own: output frame k reads the input at k * rate, interpolating
        magnitudes and accumulating each bin's measured phase advance."""
        n, dev = x.shape[0], x.device
        pick = (torch.rand(n, generator=g, device=dev) < self.cfg.tempo_p).nonzero().flatten()
        rates = _uniform(self.cfg.tempo_range, n, g, dev)[pick]
        out = x[:, :out_samples].clone()
        if pick.numel() == 0:
            return out
        hop = STRETCH_FFT // 4
        window = torch.hann_window(STRETCH_FFT, device=dev)
        spec = torch.stft(x[pick], STRETCH_FFT, hop, window=window, return_complex=True)  # (P, F, T)
        mag, phase = spec.abs(), spec.angle()
        frames_out = out_samples // hop + 1
        t_in = spec.shape[-1]
        pos = (torch.arange(frames_out, device=dev)[None, :] * rates[:, None]).clamp(max=t_in - 2)  # (P, K)
        lo = pos.floor().long()
        frac = (pos - lo)[:, None, :]
        idx = lo[:, None, :].expand(-1, spec.shape[1], -1)

        def at(v: torch.Tensor, offset: int) -> torch.Tensor:
            return torch.gather(v, 2, idx + offset)

        m = at(mag, 0) * (1 - frac) + at(mag, 1) * frac
        expected = torch.linspace(0, math.pi * hop, spec.shape[1], device=dev)[None, :, None]
        delta = at(phase, 1) - at(phase, 0) - expected
        delta = delta - 2 * math.pi * torch.round(delta / (2 * math.pi)) + expected
        acc = torch.cat([phase[:, :, :1], phase[:, :, :1] + torch.cumsum(delta[:, :, :-1], dim=2)], dim=2)
        y = torch.istft(torch.polar(m, acc), STRETCH_FFT, hop, window=window, length=out_samples)
        out[pick] = y
        return out

    def _noise(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Add white, pink or brown noise (power spectrum 1/f^a) at U(noise_snr_db) dB SNR."""
        n, t = x.shape
        dev = x.device
        snr_db = _uniform(self.cfg.noise_snr_db, n, g, dev)
        colors = self.cfg.noise_colors
        exponent = torch.tensor([NOISE_COLORS[c] for c in colors], device=dev)[
            torch.randint(len(colors), (n,), generator=g, device=dev)]
        white = torch.randn(n, t, generator=g, device=dev)
        freqs = torch.fft.rfftfreq(t, d=1.0 / self.sr, device=dev).clamp(min=20.0)  # no infinite DC
        noise = torch.fft.irfft(torch.fft.rfft(white) * freqs[None, :].pow(-exponent[:, None] / 2), n=t)
        power = x.square().mean(dim=1, keepdim=True)
        scale = torch.sqrt(power / noise.square().mean(dim=1, keepdim=True).clamp(min=1e-20)
                           * torch.pow(10.0, -snr_db / 10)[:, None])
        return x + noise * scale

    def _gain(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        db = _uniform(self.cfg.gain_db, x.shape[0], g, x.device)
        return x * torch.pow(10.0, db / 20)[:, None]

    def _fft_gain(self, x: torch.Tensor, response) -> torch.Tensor:
        """Zero-phase filtering: multiply the zero-padded spectrum by ``response(freqs_hz)`` (rows, bins)."""
        t = x.shape[1]
        n = next_fast_len(t + FILTER_PAD)
        spec = torch.fft.rfft(x, n=n)
        freqs = torch.fft.rfftfreq(n, d=1.0 / self.sr, device=x.device)
        return torch.fft.irfft(spec * response(freqs), n=n)[:, :t]

    def _filter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """High-pass U(200, 1200) Hz or low-pass U(2200, 4000) Hz (50/50), Butterworth magnitude."""
        n = x.shape[0]
        high = torch.rand(n, generator=g, device=x.device) < 0.5
        cutoff = torch.where(
            high, _uniform(self.cfg.highpass_hz, n, g, x.device), _uniform(self.cfg.lowpass_hz, n, g, x.device)
        )[:, None]

        def response(f: torch.Tensor) -> torch.Tensor:
            ratio = f[None, :].clamp(min=1e-3) / cutoff
            ratio = torch.where(high[:, None], 1 / ratio, ratio)
            return torch.rsqrt(1 + ratio.pow(2 * FILTER_ORDER))

        return self._fft_gain(x, response)

    def _delay(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """CLMR's delay: (x + volume * x delayed by U(200, 500) ms) / 2."""
        n, t = x.shape
        offset = (_uniform(self.cfg.delay_s, n, g, x.device) * self.sr).long()
        idx = torch.arange(t, device=x.device)[None, :] - offset[:, None]
        delayed = torch.gather(x, 1, idx.clamp(min=0)) * (idx >= 0)
        return (x + self.cfg.delay_volume * delayed) / 2

    def _reverb(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Synthetic room: convolve with exponentially decaying noise (RT60 U(0.2, 1) s, unit energy),
        mixed with the dry signal at a wet fraction U(0.1, 0.5)."""
        n, t = x.shape
        dev = x.device
        ir_len = int(self.cfg.reverb_rt60_s[1] * self.sr)
        rt60 = _uniform(self.cfg.reverb_rt60_s, n, g, dev)
        wet = _uniform(self.cfg.reverb_wet, n, g, dev)[:, None]
        time = torch.arange(ir_len, device=dev) / self.sr
        ir = torch.randn(n, ir_len, generator=g, device=dev) * torch.exp(-6.9078 * time[None, :] / rt60[:, None])
        ir = ir / ir.norm(dim=1, keepdim=True)
        size = next_fast_len(t + ir_len)
        reverbed = torch.fft.irfft(torch.fft.rfft(x, n=size) * torch.fft.rfft(ir, n=size), n=size)[:, :t]
        return (1 - wet) * x + wet * reverbed
