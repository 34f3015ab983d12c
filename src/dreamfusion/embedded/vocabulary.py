"""The closed vocabulary of the embedded prior: 13 object kinds, 10 colours and the four view words.

The tokenizer is slot-based rather than sequential: every caption becomes the same four slots

    [<bos>, colour, object, view]

with padding (id 0) in an empty slot. Word order, articles and punctuation therefore cannot matter, a
caption without a colour or a view is simply a caption with that slot empty (the training loop drops
slots the same way, so such prompts are in-distribution), and the unconditional caption is
``[<bos>, <pad>, <pad>, <pad>]``. The ids are built from OBJECT_KINDS / COLOURS / VIEW_LABELS so the
training loop can make tokens straight from the dataset's integer labels without touching strings.
"""

from __future__ import annotations

import unicodedata
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

from dreamfusion.cameras import VIEW_LABELS
from dreamfusion.errors import PriorError
from dreamfusion.procedural.objects import COLOURS, OBJECT_KINDS

PAD_ID = 0
BOS_ID = 1
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
OBJECT_NAMES: tuple[str, ...] = tuple(OBJECT_KINDS)
VIEW_NAMES: tuple[str, ...] = tuple(VIEW_LABELS)

TOKENS: tuple[str, ...] = ("<pad>", "<bos>", *COLOUR_NAMES, *OBJECT_NAMES, *VIEW_NAMES)
"""Token strings by id; the text encoder's embedding table has one row per entry."""
COLOUR_OFFSET = 2
OBJECT_OFFSET = COLOUR_OFFSET + len(COLOUR_NAMES)
VIEW_OFFSET = OBJECT_OFFSET + len(OBJECT_NAMES)
VOCAB_SIZE = len(TOKENS)

MAX_TOKENS = 4
"""Slots per caption: <bos>, colour, object, view."""
SLOT_COLOUR, SLOT_OBJECT, SLOT_VIEW = 1, 2, 3

ARTICLES = frozenset({"a", "an", "the"})
FUNCTION_WORDS = frozenset({"view", "of", "photo", "render", "3d", "model"})
"""Known words that carry no token: "a 3d render of a red chair, front view" reads as "red chair front"."""
ALIASES = {"gray": "grey", "ball": "sphere", "box": "cube", "donut": "torus", "doughnut": "torus", "cup": "mug"}

VOCABULARY: frozenset[str] = frozenset(
    {*COLOUR_NAMES, *OBJECT_NAMES, *VIEW_NAMES, *ARTICLES, *FUNCTION_WORDS, *ALIASES}
)
"""Every word a prompt may use."""

_WordKind = Literal["text", "symbol", "join"]
_JOINERS = frozenset("\u200c\u200d")
"""Zero-width (non-)joiners: inside emoji sequences and in words of some scripts, so they never split."""


def _char_kind(char: str) -> _WordKind | None:
    """How a character takes part in a word; None for a separator.

    ASCII keeps its old rule (letters and digits make words, everything else separates). Elsewhere whitespace,
    punctuation (P*) and invisible format characters separate; letters and numbers are "text"; symbols such as
    emoji (and any other character) are "symbol"; combining marks and joiners "join" the run they follow.
    """
    if char.isascii():
        return "text" if char.isalnum() else None
    category = unicodedata.category(char)
    if char in _JOINERS or category[0] == "M":
        return "join"
    if char.isspace() or category[0] in "PZ" or category in ("Cc", "Cf"):
        return None
    return "text" if category[0] in "LN" else "symbol"


def _words(text: str) -> list[str]:
    """Lower-cased words as typed: maximal runs of letters and digits, or of symbols (so an emoji next to a word
    is a word of its own), split at whitespace and punctuation. "Red-chair." -> ["red", "chair"];
    "ünïcödé🪑" -> ["ünïcödé", "🪑"]."""
    words: list[str] = []
    run: list[str] = []
    run_kind: _WordKind | None = None
    for char in text.lower():
        kind = _char_kind(char)
        if kind == "join":
            if run:
                run.append(char)
                continue
            kind = "text"  # a mark with nothing before it to attach to
        if run and kind != run_kind:
            words.append("".join(run))
            run = []
        if kind is not None:
            run.append(char)
        run_kind = kind
    if run:
        words.append("".join(run))
    return words


def normalize_prompt(text: str) -> str:
    """Canonical form of a caption: lower case, one leading article, a comma before the view.

    "A Red Chair." -> "a red chair"; "the red chair!" -> "a red chair"; "RED CHAIR,front view" ->
    "a red chair, front view". Unknown words are kept (``tokenize`` is the one that rejects them).
    """
    words = _words(text)
    while words and words[0] in ARTICLES:
        words = words[1:]
    view = ""
    if len(words) >= 2 and words[-1] == "view" and words[-2] in VIEW_NAMES:
        view, words = f", {words[-2]} view", words[:-2]
    if not words:
        return view.lstrip(", ")
    article = "an" if words[0][0] in "aeiou" else "a"
    return f"{article} {' '.join(words)}{view}"


def _unknown_word_message(word: str) -> str:
    return (
        f"the embedded prior does not know the word {word!r}; it knows the objects {', '.join(OBJECT_NAMES)} "
        f"and the colours {', '.join(COLOUR_NAMES)} (e.g. \"a red chair\"); "
        "use --prior sd or --prior if for open-vocabulary prompts"
    )


def tokenize(text: str, require_object: bool = True) -> list[int]:
    """The caption's ``MAX_TOKENS`` slot ids; raises PriorError on unknown words or an ambiguous caption.

    A caption names one object kind (``require_object=False`` allows none, e.g. for a negative prompt),
    at most one colour and at most one view. Empty text is refused: the unconditional caption is
    ``unconditional_tokens()``.
    """
    words = [ALIASES.get(word, word) for word in _words(text)]
    if not words:
        raise PriorError("the prompt is empty; the embedded prior needs an object, e.g. \"a red chair\"")
    slots = [BOS_ID, PAD_ID, PAD_ID, PAD_ID]
    for word in words:
        if word in ARTICLES or word in FUNCTION_WORDS:
            continue
        if word in COLOUR_NAMES:
            slot, token = SLOT_COLOUR, COLOUR_OFFSET + COLOUR_NAMES.index(word)
        elif word in OBJECT_NAMES:
            slot, token = SLOT_OBJECT, OBJECT_OFFSET + OBJECT_NAMES.index(word)
        elif word in VIEW_NAMES:
            slot, token = SLOT_VIEW, VIEW_OFFSET + VIEW_NAMES.index(word)
        else:
            raise PriorError(_unknown_word_message(word))
        if slots[slot] not in (PAD_ID, token):
            kind = ("", "colour", "object", "view")[slot]
            raise PriorError(
                f"the prompt {text!r} names more than one {kind}; the embedded prior draws one {kind} at a time"
            )
        slots[slot] = token
    if require_object and slots[SLOT_OBJECT] == PAD_ID:
        raise PriorError(
            f"the prompt {text!r} names no object; the embedded prior knows {', '.join(OBJECT_NAMES)}"
        )
    return slots


def unconditional_tokens() -> list[int]:
    """The empty caption, used for classifier-free guidance and condition dropout."""
    return [BOS_ID] + [PAD_ID] * (MAX_TOKENS - 1)


def caption_tokens(
    object_ids: Int[Tensor, " B"], colour_ids: Int[Tensor, " B"], view_ids: Int[Tensor, " B"]
) -> Int[Tensor, "B 4"]:
    """The slot tokens of "a {colour} {object}, {view} view" from integer labels, on their device."""
    bos = torch.full_like(object_ids, BOS_ID)
    return torch.stack((bos, colour_ids + COLOUR_OFFSET, object_ids + OBJECT_OFFSET, view_ids + VIEW_OFFSET), dim=1)


def detokenize(ids: list[int]) -> str:
    """The normalized caption of slot ids: ``detokenize(tokenize(c)) == normalize_prompt(c)`` for canonical c."""
    words = [TOKENS[i] for i in ids[SLOT_COLOUR:SLOT_VIEW] if i != PAD_ID]
    text = " ".join(words)
    if ids[SLOT_VIEW] != PAD_ID:
        text += f", {TOKENS[ids[SLOT_VIEW]]} view"
    return normalize_prompt(text)


def has_view(text: str) -> bool:
    """Whether the caption already names a view (the prior appends one per camera itself)."""
    return any(ALIASES.get(word, word) in VIEW_NAMES for word in _words(text))
