"""Seeded speech-like and noise signals with per-frame labels, for the trained VAD of the exporter
corpus (``vad_trained_if``, built by ``models/vad_trained.py``) and its held-out evaluation.
numpy only: tests and benchmarks regenerate the held-out set instead of storing it.

A clip is ``SAMPLES`` samples at 16 kHz or 8 kHz, cut into ``FRAMES`` frames of ``SAMPLES /
FRAMES`` samples. It holds background noise everywhere (white, pink or brown noise, mains hum
with harmonics, or a steady beep: all labelled 0) and 0-2 "utterances" (labelled 1 on the frames
where the utterance's envelope is above 10% of its peak):

- voiced speech: a glottal pulse train (f0 90-260 Hz with slow drift and jitter) through two or
  three formant resonances (F1 300-900 Hz, F2 900-2400 Hz, F3 2200-3200 Hz below Nyquist), under
  a syllabic envelope (3-7 Hz raised-cosine bumps);
- mixed in, unvoiced frication: high-passed noise bursts at syllable onsets.

The signal-to-noise ratio is drawn from [-3, 20] dB per clip and the level from [-30, -6] dBFS.
"""
from __future__ import annotations

import numpy as np

SAMPLES = 4096
FRAMES = 64
RATES = (16000, 8000)
#: the trained VAD's held-out set (training used seed 18, its calibration feeds seed 19)
HELDOUT_SEED = 20
HELDOUT_CLIPS = 128


def _noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    kind = rng.integers(0, 5)
    t = np.arange(n) / sr
    if kind == 0:
        x = rng.standard_normal(n)
    elif kind == 1:  # pink: 1/f power
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / sr)
        spec[1:] /= np.sqrt(f[1:])
        spec[0] = 0
        x = np.fft.irfft(spec, n)
    elif kind == 2:  # brown
        x = np.cumsum(rng.standard_normal(n))
        x -= np.linspace(x[0], x[-1], n)
    elif kind == 3:  # mains hum with harmonics, plus a little white noise
        f0 = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) for k in range(1, 6))
        x = x + 0.05 * rng.standard_normal(n)
    else:  # a steady beep (stationary tone: not speech)
        x = np.sin(2 * np.pi * rng.uniform(400, min(3000, sr / 2 - 500)) * t) + 0.1 * rng.standard_normal(n)
    return x / (np.std(x) + 1e-9)


def _formants(x: np.ndarray, formants: list[tuple[float, float, float]], sr: int) -> np.ndarray:
    """``x`` through parallel resonances (centre Hz, bandwidth Hz, gain), applied in the
    frequency domain (the magnitude of a two-pole resonator at each centre)."""
    f = np.fft.rfftfreq(x.size, 1 / sr)
    response = sum(g / np.sqrt(1 + ((f - c) / (bw / 2)) ** 2) for c, bw, g in formants)
    return np.fft.irfft(np.fft.rfft(x) * response, x.size)


def _utterance(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(signal, envelope) of one utterance spanning a random part of the clip."""
    t = np.arange(n) / sr
    length = int(n * rng.uniform(0.25, 0.7))
    start = int(rng.integers(0, n - length + 1))
    env = np.zeros(n)
    pos = start
    rate = rng.uniform(3, 7)
    while pos < start + length:  # syllables: raised-cosine bumps
        syl = int(sr / rate * rng.uniform(0.6, 1.2))
        syl = min(syl, start + length - pos)
        if syl > 8:
            env[pos:pos + syl] = np.maximum(env[pos:pos + syl], np.sin(np.linspace(0, np.pi, syl)) ** 2
                                            * rng.uniform(0.6, 1.0))
        pos += syl + int(sr * rng.uniform(0.0, 0.04))
    f0 = rng.uniform(90, 260) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    f0 *= 1 + 0.01 * rng.standard_normal(n)
    phase = np.cumsum(f0 / sr)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    formants = []
    for lo, hi, bw in ((300, 900, 90), (900, 2400, 120), (2200, 3200, 180)):
        hi = min(hi, sr / 2 - 300)
        if lo < hi:
            formants.append((rng.uniform(lo, hi), bw, rng.uniform(0.3, 1.0)))
    voiced = _formants(pulses, formants, sr)
    hiss = np.diff(rng.standard_normal(n + 1))  # high-passed noise for frication
    onset = np.maximum(np.diff(env, prepend=0.0), 0) * sr / 40
    fric = hiss * np.clip(onset, 0, 1) * rng.uniform(0.2, 0.6)
    x = voiced / (np.std(voiced) + 1e-9) + fric
    return x * env, env


def clip(rng: np.random.Generator, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(audio float32 [SAMPLES], labels uint8 [FRAMES]) of one clip at ``sr``."""
    n = SAMPLES
    noise = _noise(rng, n, sr)
    speech = np.zeros(n)
    env = np.zeros(n)
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        x, e = _utterance(rng, n, sr)
        speech += x
        env = np.maximum(env, e)
    snr_db = rng.uniform(-3, 20)
    if env.any():
        power = np.mean(speech[env > 0.1] ** 2)
        speech *= np.sqrt(10 ** (snr_db / 10) / (power + 1e-12))
    x = noise + speech
    x *= 10 ** (rng.uniform(-30, -6) / 20) / (np.max(np.abs(x)) + 1e-9)
    labels = (env.reshape(FRAMES, -1).max(axis=1) > 0.1).astype(np.uint8)
    return x.astype(np.float32), labels


def dataset(seed: int, count: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` clips at ``sr``: audio float32 [count, SAMPLES], labels uint8 [count, FRAMES]."""
    rng = np.random.default_rng([seed, sr])
    clips = [clip(rng, sr) for _ in range(count)]
    return np.stack([c[0] for c in clips]), np.stack([c[1] for c in clips])


def heldout(sr: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out clips at ``sr`` that frame agreement is measured on (tests, benchmark)."""
    return dataset(HELDOUT_SEED, HELDOUT_CLIPS, sr)


def frame_agreement(reference: np.ndarray, candidate: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of frames on which two speech-probability maps take the same decision."""
    return float(np.mean((reference > threshold) == (candidate > threshold)))
