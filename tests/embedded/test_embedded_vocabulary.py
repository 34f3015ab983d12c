import pytest

from dreamfusion.cameras import VIEW_LABELS
from dreamfusion.embedded import vocabulary as vocab
from dreamfusion.priors.base import PriorError
from dreamfusion.procedural.objects import COLOURS, OBJECT_KINDS, caption


@pytest.mark.parametrize(
    "text", ["A Red Chair", "red chair.", "the red chair!", "  a   RED chair  ", "An red chair", "a red, chair"]
)
def test_normalize_prompt_is_forgiving(text: str) -> None:
    assert vocab.normalize_prompt(text) == "a red chair"


def test_normalize_prompt_article_and_view() -> None:
    assert vocab.normalize_prompt("Orange Lamp") == "an orange lamp"
    assert vocab.normalize_prompt("the ORANGE lamp ,Side View.") == "an orange lamp, side view"
    assert vocab.normalize_prompt("") == ""


def test_tokens_ignore_order_articles_and_aliases() -> None:
    expected = vocab.tokenize("a grey sphere")
    assert vocab.tokenize("Sphere, gray!") == expected
    assert vocab.tokenize("the grey ball") == expected
    assert len(expected) == vocab.MAX_TOKENS and expected[0] == vocab.BOS_ID


def test_round_trip_over_every_training_caption() -> None:
    for kind in OBJECT_KINDS:
        for colour in COLOURS:
            for label in VIEW_LABELS:
                text = caption(colour, kind, label)
                ids = vocab.tokenize(text)
                assert all(0 <= i < vocab.VOCAB_SIZE for i in ids)
                assert vocab.detokenize(ids) == vocab.normalize_prompt(text) == text
    assert vocab.detokenize(vocab.tokenize("a chair")) == "a chair"


def test_colour_and_view_are_optional_object_is_not() -> None:
    ids = vocab.tokenize("a chair")
    assert ids[vocab.SLOT_COLOUR] == vocab.PAD_ID and ids[vocab.SLOT_VIEW] == vocab.PAD_ID
    with pytest.raises(PriorError, match="names no object"):
        vocab.tokenize("a red, front view")
    assert vocab.tokenize("red", require_object=False)[vocab.SLOT_OBJECT] == vocab.PAD_ID
    with pytest.raises(PriorError, match="more than one object"):
        vocab.tokenize("a chair table")


def test_unknown_word_message_lists_the_domain_and_points_elsewhere() -> None:
    with pytest.raises(PriorError) as error:
        vocab.tokenize("a DSLR photo of a corgi")
    message = str(error.value)
    assert "'dslr'" in message and "\n" not in message
    assert all(kind in message for kind in OBJECT_KINDS) and all(colour in message for colour in COLOURS)
    assert "--prior sd" in message and "--prior if" in message


def test_empty_prompt_is_refused() -> None:
    for text in ("", "   ", "?!"):
        with pytest.raises(PriorError, match="empty"):
            vocab.tokenize(text)
    assert vocab.unconditional_tokens() == [vocab.BOS_ID, 0, 0, 0]


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("a red chair 🪑 ünïcödé", "🪑"),  # the first unknown word, not a fragment of a later one
        ("a red chair ünïcödé 🪑", "ünïcödé"),
        ("a red chair🪑", "🪑"),  # an emoji beside a word is a word of its own
        ("a red ÜNÏCÖDÉ chair", "ünïcödé"),  # lower-cased, accents kept
        ("a red cha\u0308ir", "cha\u0308ir"),  # a combining mark stays in its word
        ("a red chair 👍🏽", "👍🏽"),  # a run of symbols (here an emoji and its skin tone) is one word
    ],
)
def test_unknown_unicode_word_is_named_as_typed(text: str, word: str) -> None:
    with pytest.raises(PriorError) as error:
        vocab.tokenize(text)
    assert f"the word {word!r};" in str(error.value)


def test_unicode_whitespace_and_punctuation_separate_words() -> None:
    expected = vocab.tokenize("a red chair, front view")
    for text in ("a\u00a0red\u3000chair、front view", "«red-chair» — front view!", "red\u200bchair front\u2028view"):
        assert vocab.tokenize(text) == expected
    assert vocab.normalize_prompt("¿Red chair?") == "a red chair"
    assert vocab.has_view("a chair¡side view!") and not vocab.has_view("a chair 🪑")


def test_ascii_symbols_still_separate_words() -> None:
    # ASCII keeps its rule: anything but a letter or digit splits ("+" and "$" are symbols, not punctuation).
    assert vocab.tokenize("red+chair$front_view") == vocab.tokenize("a red chair, front view")
    assert vocab.normalize_prompt("3D model of a RED chair") == "a 3d model of a red chair"
