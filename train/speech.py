"""Speech for the synthetic talking faces: sentences from word lists, spoken by espeak-ng, and the mouth
movement read back from the audio itself.

    text = sentences(np.random.default_rng(0), 1)[0]
    audio = synthesize(text, voice="en-us+f2", rate=150, pitch=60)     # float32 mono 16 kHz in [-1, 1]
    opening = mouth_track(audio)                                        # (ceil(len / 640),) in [0, 1]

espeak-ng (Debian package espeak-ng) is deterministic: the same text, voice, rate and pitch give the same
samples, so clips built from it are reproducible from a seed. It writes 22.05 kHz; `synthesize` resamples with
`runtime.audio_input.PcmConverter`, the same exact, split-independent resampler the runtime uses.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import wave

import numpy as np

from ..runtime.audio_input import PcmConverter
from ..runtime.frame import AUDIO_RATE, VIDEO_FPS

ESPEAK = "espeak-ng"
"""The executable looked up on PATH."""

INSTALL_HINT = "install the Debian package espeak-ng (apt-get install espeak-ng)"

_ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
            "en-us-nyc")
_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5", "+klatt",
             "+klatt2", "+klatt3")
VOICES = tuple(accent + variant for accent in _ACCENTS for variant in _VARIANTS)
"""128 voices of the Debian espeak-ng package: eight English accents x sixteen variants (male, female and
Klatt voicings). The MBROLA voices need extra packages; whisper and croak variants are left out because their
loudness does not follow the mouth the way voiced speech does."""

RATES = (130, 200)
"""Words per minute, inclusive range used by the data set."""

PITCHES = (30, 70)
"""espeak-ng pitch (0-99), inclusive range used by the data set."""

FLOOR_DB, CEILING_DB = -45.0, -12.0
"""`mouth_track`'s mapping, in dB relative to full scale: frames at or below FLOOR_DB are closed (0), frames
at or above CEILING_DB fully open (1), linear in dB between. Over espeak-ng's voices the speech frames' levels
have quartiles -31 / -24 / -19 dBFS and a 99th percentile of -13 (so the mouth is rarely pinned open); its
pauses are digital silence."""


class SpeechSynthesisError(RuntimeError):
    """espeak-ng is missing or failed."""


def synthesize(text: str, voice: str = "en", rate: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak `text` with espeak-ng: float32 mono at 16 kHz in [-1, 1]. `rate` in words per minute (80-450),
    `pitch` 0-99. Raises SpeechSynthesisError naming the Debian package when espeak-ng is not on PATH."""
    if not text.strip():
        raise ValueError("synthesize needs some text to speak")
    if not (isinstance(rate, int) and 80 <= rate <= 450 and isinstance(pitch, int) and 0 <= pitch <= 99):
        raise ValueError(f"rate must be an int in [80, 450] and pitch an int in [0, 99], got {rate!r}, {pitch!r}")
    executable = shutil.which(ESPEAK)
    if executable is None:
        raise SpeechSynthesisError(f"{ESPEAK} was not found on PATH; {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="hallo-rt-speech-") as folder:
        path = os.path.join(folder, "speech.wav")
        # Text on stdin, never on the command line: a sentence starting with "-" cannot become an option.
        command = [executable, "-v", voice, "-s", str(rate), "-p", str(pitch), "-b", "1", "-w", path, "--stdin"]
        result = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, timeout=60)
        if result.returncode != 0 or not os.path.exists(path):
            message = result.stderr.decode("utf-8", "replace").strip()
            raise SpeechSynthesisError(f"{ESPEAK} failed for voice {voice!r} (exit {result.returncode}): {message}")
        with wave.open(path, "rb") as wav:
            if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
                raise SpeechSynthesisError(f"{ESPEAK} wrote {wav.getnchannels()} channel(s) of "
                                           f"{8 * wav.getsampwidth()}-bit audio; expected 16-bit mono")
            sample_rate = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    if pcm.size == 0:
        raise SpeechSynthesisError(f"{ESPEAK} produced no audio for {text!r}")
    converter = PcmConverter(AUDIO_RATE)
    audio = np.concatenate([converter.push(pcm, sample_rate), converter.flush()])
    return np.clip(audio, -1.0, 1.0).astype(np.float32)  # the resampler's ringing can overshoot full scale


# ----------------------------------------------------------------------------------------------- sentences

_NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo",
          "Maria", "Noah", "Olivia", "Peter", "Rosa", "Sam", "Tom", "Vera")
_NOUNS = ("apple", "garden", "river", "teacher", "window", "bottle", "mountain", "doctor", "village", "letter",
          "kitchen", "engine", "pocket", "island", "monkey", "pencil", "castle", "blanket", "rabbit", "camera",
          "basket", "forest", "ticket", "candle", "bridge", "farmer", "jacket", "ladder", "mirror", "orange",
          "painter", "rocket", "sailor", "tomato", "umbrella", "wagon", "button", "dragon", "feather", "hammer",
          "lemon", "market", "needle", "ocean", "puzzle", "violin", "wizard", "anchor", "cabbage", "desert",
          "elephant", "fountain", "guitar", "harbour", "kettle", "lantern", "meadow", "notebook", "parrot",
          "shadow", "cloud", "stone", "horse", "train", "bread", "chair", "dog", "boat", "song", "star")
_VERBS_PAST = ("found", "carried", "painted", "opened", "followed", "watched", "cleaned", "dropped", "lifted",
               "pushed", "pulled", "washed", "counted", "borrowed", "hid", "built", "broke", "caught", "chose",
               "drew", "fed", "kept", "left", "lost", "met", "sold", "sent", "shook", "took", "threw", "woke",
               "wrapped", "moved", "visited", "described", "remembered", "collected", "measured", "repaired",
               "discovered")
_VERBS_PRESENT = ("finds", "carries", "paints", "opens", "follows", "watches", "cleans", "drops", "lifts",
                  "pushes", "pulls", "washes", "counts", "borrows", "hides", "builds", "breaks", "catches",
                  "chooses", "draws", "feeds", "keeps", "sells", "sends", "shakes", "takes", "throws", "moves",
                  "visits", "describes", "remembers", "collects", "measures", "repairs", "discovers")
_VERBS_BASE = ("find", "carry", "paint", "open", "follow", "watch", "clean", "lift", "push", "wash", "count",
               "borrow", "hide", "build", "catch", "choose", "draw", "feed", "keep", "sell", "send", "take",
               "move", "visit", "describe", "remember", "collect", "measure", "repair", "discover")
_ADJECTIVES = ("small", "bright", "heavy", "quiet", "yellow", "ancient", "curious", "gentle", "broken", "famous",
               "hungry", "lucky", "narrow", "purple", "rusty", "silent", "tiny", "wooden", "golden", "empty",
               "clever", "dusty", "frozen", "hidden", "little", "modern", "noisy", "orange", "proud", "round",
               "shiny", "strange", "warm", "wild", "young", "lazy", "early", "green", "soft", "tall")
_ADVERBS = ("slowly", "quickly", "carefully", "happily", "quietly", "suddenly", "gently", "loudly", "nearly",
            "always", "never", "often", "sometimes", "again", "today", "yesterday", "tomorrow", "later")
_PREPOSITIONS = ("near", "under", "behind", "beside", "above", "inside", "across", "along", "around", "below",
                 "beyond", "past", "through", "towards", "with", "without")
_DETERMINERS = ("the", "a", "my", "your", "his", "her", "our", "their", "this", "that", "every", "one")
_TEMPLATES = (
    "{Det} {adj} {noun} {past} {det} {noun} {prep} {det} {noun}.",
    "{Name} {adv} {past} {det} {adj} {noun}.",
    "Did {name} {base} {det} {noun} {prep} {det} {adj} {noun}?",
    "{Det} {noun} {present} {det} {adj} {noun} {adv}.",
    "{Name} and {name} {past} {det} {noun}, then {past} {det} {adj} {noun}.",
    "Why does {det} {adj} {noun} {base} {det} {noun}?",
    "{Adv}, {name} {past} {det} {noun} {prep} {det} {noun}.",
    "We {past} {det} {adj} {noun} and {det} {adj} {noun}.",
    "Please {base} {det} {noun} {prep} {det} {noun}.",
    "{Det} {adj} {noun} {present} {prep} {det} {noun}.",
    "I think {name} {past} {det} {noun} {adv}.",
    "{Name} {present} {det} {adj} {noun}, but {name} {present} {det} {noun}.",
)
_SLOTS = {"name": _NAMES, "noun": _NOUNS, "past": _VERBS_PAST, "present": _VERBS_PRESENT, "base": _VERBS_BASE,
          "adj": _ADJECTIVES, "adv": _ADVERBS, "prep": _PREPOSITIONS, "det": _DETERMINERS}


def _fill(template: str, rng: np.random.Generator) -> str:
    """Fill a template's {slot}s left to right; a capitalised slot name gives a capitalised word."""
    parts, rest = [], template
    while "{" in rest:
        head, rest = rest.split("{", 1)
        slot, rest = rest.split("}", 1)
        words = _SLOTS[slot.lower()]
        word = words[int(rng.integers(len(words)))]
        parts += [head, word[0].upper() + word[1:] if slot[0].isupper() else word]
    sentence = "".join(parts) + rest
    return sentence[0].upper() + sentence[1:]


def sentences(rng: np.random.Generator, n: int) -> list[str]:
    """`n` random English sentences (6-11 words) from templates over word lists: millions of combinations, so
    repeats are rare. Deterministic given the generator's state."""
    return [_fill(_TEMPLATES[int(rng.integers(len(_TEMPLATES)))], rng) for _ in range(n)]


# --------------------------------------------------------------------------------------- mouth from audio


def _frame_windows(audio: np.ndarray, fps: int, sample_rate: int) -> np.ndarray:
    """(T, 2 * hop) Hann-windowed slices centred on each frame's centre (two frames long), zero-padded."""
    if sample_rate % fps:
        raise ValueError(f"sample_rate {sample_rate} must be a multiple of fps {fps}")
    hop = sample_rate // fps
    frames = math.ceil(audio.size / hop)
    padded = np.zeros(frames * hop + 2 * hop, np.float32)
    padded[hop // 2: hop // 2 + audio.size] = audio  # so window t spans [t * hop - hop / 2, t * hop + 3 hop / 2)
    index = np.arange(frames)[:, None] * hop + np.arange(2 * hop)[None, :]
    return padded[index] * np.hanning(2 * hop).astype(np.float32)


def frame_loudness_db(audio: np.ndarray, fps: int = VIDEO_FPS, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """(T,) RMS level in dBFS of each video frame's audio, over a two-frame Hann window centred on the frame
    (the smoothing: no frame-to-frame flicker, and a 40 ms look either way, as real lips anticipate sound).
    A sine at full scale reads -3 dB; digital silence -120 dB."""
    windows = _frame_windows(np.asarray(audio, np.float32), fps, sample_rate)
    # The Hann window's mean square is 3/8: dividing by it keeps the level of a steady sound unchanged.
    power = (windows.astype(np.float64) ** 2).mean(axis=1) / 0.375
    return 10.0 * np.log10(np.maximum(power, 1e-12))


def mouth_track(audio: np.ndarray, fps: int = VIDEO_FPS, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """(T,) mouth opening in [0, 1] per video frame, T = ceil(len(audio) / (sample_rate / fps)): the frame's
    smoothed loudness (`frame_loudness_db`) mapped linearly from FLOOR_DB (closed; silence) to CEILING_DB
    (fully open), clipped. Frame-local and causal but for the 20 ms half window ahead."""
    level = frame_loudness_db(audio, fps, sample_rate)
    return np.clip((level - FLOOR_DB) / (CEILING_DB - FLOOR_DB), 0.0, 1.0)


def mouth_width_track(audio: np.ndarray, fps: int = VIDEO_FPS, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """(T,) mouth width in [0, 1], a second, weaker signal: the share of the frame's energy above 2.5 kHz
    (fricatives and front vowels: spread lips) against below (back rounded vowels: narrow lips), mapped
    linearly in log10 from 0.005 (-> 0.2) to 0.5 (-> 0.8), around espeak-ng speech's median share of 0.05,
    and pulled to the neutral 0.5 as the mouth closes (silence has no shape)."""
    windows = _frame_windows(np.asarray(audio, np.float32), fps, sample_rate)
    spectrum = np.abs(np.fft.rfft(windows, axis=1)) ** 2
    frequencies = np.fft.rfftfreq(windows.shape[1], 1.0 / sample_rate)
    high = spectrum[:, frequencies >= 2500.0].sum(axis=1)
    share = high / np.maximum(spectrum.sum(axis=1), 1e-12)
    shaped = np.clip(0.5 + 0.3 * (np.log10(np.maximum(share, 1e-6)) + 1.3), 0.0, 1.0)
    weight = np.clip(2.0 * mouth_track(audio, fps, sample_rate), 0.0, 1.0)
    return 0.5 + (shaped - 0.5) * weight
