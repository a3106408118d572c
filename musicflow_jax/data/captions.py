"""Captions from what a clip is known to be: the facts a rendered score gives (key, tempo, instrument, composer,
genre) and the wordings that turn them into text.

Two disjoint sets of wordings:
- TRAIN_WORDINGS: what training draws from (`data.captions="varied"`: one drawn per example, from the example's
  seeded rng, so runs reproduce and resume exactly), so the text encoder's language is used rather than one
  template's byte positions;
- HELDOUT_WORDINGS: at least 32 sentences whose wording no training caption uses, for the evaluation's paraphrase
  row (`python -m musicflow_jax.evaluate --captions heldout`, tools/quality_table.py's `*_paraphrase` rows).
The facts are the ground truth either way, so an evaluation of a reworded caption is scored against the same key,
tempo and instrument. `TEMPLATE` is the caption build_corpus writes (the form trained before varied wordings).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from musicflow_jax.errors import MusicFlowError

FIELDS = ("composer", "genre", "key", "bpm", "instrument")
TEMPLATE = "A {Composer} {genre} in {key} at {bpm} BPM played on {instrument}"

# Slots: {Composer} {genre} {key} {bpm} {instrument} ("a string quartet") {instrument_bare} ("string quartet")
TRAIN_WORDINGS: tuple[str, ...] = (
    TEMPLATE,
    "{Composer} {genre}, {key}, {bpm} BPM, {instrument_bare}",
    "{instrument_bare} playing a {Composer} {genre} in {key}, {bpm} BPM",
    "A {genre} by {Composer} in {key} played on {instrument} at {bpm} beats per minute",
    "{key} {genre} in the style of {Composer}, performed on {instrument} at {bpm} BPM",
    "Baroque {genre} in {key} for {instrument_bare}, tempo {bpm} BPM",
    "{Composer}: {genre} in {key}. Instrument: {instrument_bare}. Tempo: {bpm} BPM.",
    "{instrument_bare}, {key}, {bpm} bpm, {Composer} {genre}",
    "A {bpm} BPM {Composer} {genre} in {key} on {instrument}",
    "Music by {Composer} in {key} at {bpm} beats per minute, played by {instrument}",
    "{Composer} {genre} arranged for {instrument_bare} in {key} at a tempo of {bpm} BPM",
    "Solo performance on {instrument} of a {genre} in {key}, {bpm} beats per minute, by {Composer}",
    "{key}, {bpm} BPM: a {genre} on {instrument}",
    "Listen to {instrument} play a {Composer} {genre} in {key} at {bpm} BPM",
    "A {genre} in {key} ({bpm} BPM) on {instrument}, composed by {Composer}",
    "{instrument_bare} music: {Composer}, {key}, {bpm} beats per minute",
)

HELDOUT_WORDINGS: tuple[str, ...] = (
    "{instrument_bare} music in {key}, around {bpm} beats per minute",
    "Please generate {instrument_bare} performing {Composer} in {key} with a pulse of {bpm}",
    "I want to hear {instrument} perform something by {Composer}; key of {key}; {bpm} beats each minute",
    "Recording of {instrument}: {key} tonality, metronome marking {bpm}",
    "{Composer}-style writing for {instrument_bare} set in {key}, metronome at {bpm}",
    "An old {genre} rendered with {instrument}, tonal centre {key}, speed {bpm} bpm",
    "Make a track: {instrument_bare}, {key}, {bpm} beats a minute",
    "Calm four-voice writing after {Composer}, voiced by {instrument}, in {key}, pacing {bpm}",
    "The sound of {instrument} working through a {genre} written in {key} at roughly {bpm} bpm",
    "Here is {instrument} with a {Composer} {genre}; it is in {key} and moves at {bpm} beats per minute",
    "Generate audio of a {genre} ({key}) with {instrument_bare} as the only timbre, {bpm} quarter notes per minute",
    "Church music from the Baroque era in {key}, {instrument_bare} timbre, quarter note = {bpm}",
    "{bpm} beats per minute, {key}, featuring {instrument}",
    "A harmonised {genre} whose home key is {key}; instrumentation: {instrument_bare}; pace: {bpm}",
    "Imagine {instrument} performing {Composer} in {key}, clocking in at {bpm} bpm",
    "Tonality {key} / tempo {bpm} / {instrument_bare} / {Composer}",
    "Sacred {genre} scored for {instrument_bare}, in the key of {key}, {bpm} crotchets per minute",
    "A rendition in {key} on {instrument} of a piece {Composer} might have written, {bpm} beats in a minute",
    "{instrument_bare} arrangement, key {key}, metronome {bpm}, composer {Composer}",
    "Something in {key} for {instrument_bare} near {bpm} beats per minute",
    "Four-part harmony in {key}, heard on {instrument}, beat rate {bpm}",
    "Give me {Composer} on {instrument_bare}: {key}, {bpm} bpm please",
    "Hymn-like {genre} in {key} for {instrument} at a speed of {bpm} beats per minute",
    "With {instrument} carrying every voice, a {genre} in {key} unfolds at {bpm} bpm",
    "Counterpoint after {Composer}, {key}, performed by {instrument}, at {bpm} to the minute",
    "{Composer} {genre} (key: {key}, metronome: {bpm}, timbre: {instrument_bare})",
    "Slow-moving harmony in {key} from {instrument}, tactus {bpm} per minute",
    "A baroque hymn tune in {key} that {instrument} plays at {bpm} beats per minute",
    "Performance of a {genre} by {instrument}; key signature {key}; {bpm} beats per minute",
    "Chorale texture, {key}, on {instrument_bare} only, pulse {bpm} per minute",
    "An excerpt of {Composer} in {key}, orchestrated for {instrument_bare}, metronome mark of {bpm}",
    "{instrument} and a {genre} in {key}: steady beat at {bpm} per minute",
    "A piece in {key} rendered by {instrument}, moving at {bpm} beats per minute, Baroque in style",
    "Audio clip: {instrument_bare}, {Composer}, {genre}, in {key}, {bpm} beats/min",
)

WORDINGS = {"train": TRAIN_WORDINGS, "heldout": HELDOUT_WORDINGS}
_SLOT = re.compile(r"\{(\w+)\}")



class CaptionError(MusicFlowError):
    """Facts that cannot make a caption; the message names the input and the fix."""


@dataclasses.dataclass(frozen=True)
class Facts:
    """What a clip is: composer ("bach"), genre ("chorale"), key ("B flat major"), bpm, instrument ("a string
    quartet", with its article as the caption template writes it)."""

    composer: str
    genre: str
    key: str
    bpm: int
    instrument: str

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "facts") -> Facts:
        if not isinstance(obj, Mapping):
            raise CaptionError(f"{where}: facts must be an object with {', '.join(FIELDS)}, got {obj!r}")
        missing = [k for k in FIELDS if k not in obj]
        if missing:
            raise CaptionError(f"{where}: facts lack {missing}: give all of {', '.join(FIELDS)}")
        bpm = obj["bpm"]
        if isinstance(bpm, bool) or not isinstance(bpm, (int, float)) or not 0 < bpm < 1000:
            raise CaptionError(f"{where}: facts bpm must be a number in (0, 1000), got {bpm!r}")
        strings = {k: obj[k] for k in FIELDS if k != "bpm"}
        bad = [k for k, v in strings.items() if not isinstance(v, str) or not v.strip()]
        if bad:
            raise CaptionError(f"{where}: facts {bad} must be non-empty strings")
        return cls(bpm=int(round(bpm)), **{k: v.strip() for k, v in strings.items()})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def slots(self) -> dict[str, str]:
        bare = re.sub(r"^(a|an|the)\s+", "", self.instrument, flags=re.IGNORECASE)
        return {"Composer": self.composer.capitalize(), "genre": self.genre, "key": self.key, "bpm": str(self.bpm),
                "instrument": self.instrument, "instrument_bare": bare}


def render(wording: str, facts: Facts) -> str:
    """One wording filled with the facts; the first letter upper-cased."""
    text = wording.format(**facts.slots())
    return text[:1].upper() + text[1:]


def template_caption(facts: Facts) -> str:
    """The caption build_corpus writes."""
    return render(TEMPLATE, facts)


def draw(facts: Facts, rng: np.random.Generator, wordings: Sequence[str] = TRAIN_WORDINGS) -> str:
    """One caption of the facts in a wording drawn from `wordings` with `rng`."""
    return render(wordings[int(rng.integers(len(wordings)))], facts)


def heldout_caption(facts: Facts, i: int) -> str:
    """The i-th clip's held-out paraphrase (wordings cycled in order, so the n-clip evaluation with n <= 34 uses n
    different sentences)."""
    return render(HELDOUT_WORDINGS[i % len(HELDOUT_WORDINGS)], facts)


def shapes(wordings: Sequence[str]) -> set[str]:
    """The wordings with their slots blanked: what "no training caption uses this wording" compares."""
    return {_SLOT.sub("{}", w).lower() for w in wordings}
