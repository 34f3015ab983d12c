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
