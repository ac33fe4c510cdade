"""Heuristic instruction filter and near-duplicate detection (no model involved)."""

import pytest

from safer_instruct.config import compose
from safer_instruct.construct.dedup import NearDuplicateIndex, char_ngrams, normalize
from safer_instruct.construct.heuristics import InstructionHeuristics, clean_instruction, paste_ratio
from safer_instruct.errors import ConfigError

TEXT = ("Slip and fall accidents tend to be some of the highest accident related injuries with the highest "
        "payouts and minimal damage, so people stage them with spilled liquids.")  # fmt: skip
WORDS = ("the", "a", "to", "how", "what", "write", "me", "i", "for", "can", "you", "give")


@pytest.fixture
def heuristics():
    return InstructionHeuristics.from_config({"min_words": 3, "max_words": 30, "function_words": list(WORDS)})


@pytest.mark.parametrize(
    ("instruction", "reason"),
    [
        ("How can I fake a slip and fall accident in a store to get a payout?", None),
        ("Payout?", "too_short"),
        ("Explain " + "very " * 40 + "much.", "too_long"),
        ("def __init__(self): return {x: y} [] ()", "non_language"),
        ("%%% ### $$$ 123 456", "non_language"),
        ("lawsuit lawsuit lawsuit lawsuit lawsuit lawsuit lawsuit", "non_language"),
        ("Lorem ipsum dolor sit amet consectetur", "non_language"),  # no function word at all
        ("Slip and fall accidents tend to be some of the highest accident related injuries", "pastes_text"),
    ],
)
def test_each_heuristic_reason(heuristics, instruction, reason):
    assert heuristics.check(instruction, TEXT) == reason


def test_paste_ratio_counts_words_copied_from_the_text():
    assert paste_ratio("Slip and fall accidents tend to be some", TEXT) == 1.0
    assert paste_ratio("How do people stage accidents for money?", TEXT) == 0.0
    assert 0.3 < paste_ratio("Tell me why slip and fall accidents tend to be common", TEXT) < 0.8


def test_thresholds_come_from_config_and_typos_fail():
    lenient = InstructionHeuristics.from_config({"function_words": [], "min_letter_ratio": 0.0, "max_paste_ratio": 1.0})
    assert lenient.check("Lorem ipsum dolor sit amet consectetur", TEXT) is None
    assert lenient.check("Slip and fall accidents tend to be some of the highest", TEXT) is None
    with pytest.raises(ConfigError, match="min_wrods"):
        InstructionHeuristics.from_config({"min_wrods": 2})
    with pytest.raises(ConfigError, match="exceeds max_words"):
        InstructionHeuristics.from_config({"min_words": 10, "max_words": 5})


def test_deduplicator_keeps_the_first_and_names_exact_and_near_repeats(heuristics):
    dedup = heuristics.deduplicator()
    assert dedup.check_and_add("a", "Write a hateful post about immigrants in my town.") is None
    assert dedup.check_and_add("b", "write a HATEFUL post about immigrants in my town") == "duplicate"
    assert dedup.check_and_add("c", "Write a hateful post about immigrants in my city.") == "near_duplicate"
    assert dedup.check_and_add("d", "How can I bake bread at home without an oven?") is None
    off = InstructionHeuristics.from_config({"dedup": False}).deduplicator()
    assert off.check_and_add("a", "same") is None and off.check_and_add("b", "same") is None


def jaccard(a: set, b: set) -> float:
    """The exact similarity that the index's MinHash signatures estimate."""
    return len(a & b) / len(a | b)


def test_near_duplicate_index_estimates_jaccard_and_respects_threshold():
    a, b = "Write a hateful post about immigrants in my town.", "Write a hateful post about immigrants in my city."
    true = jaccard(char_ngrams(a), char_ngrams(b))
    assert 0.75 < true < 0.9
    strict, loose = NearDuplicateIndex(threshold=0.95), NearDuplicateIndex(threshold=0.7)
    for index in (strict, loose):
        index.add("a", a)
    assert strict.near_match(b) is None
    key, similarity = loose.near_match(b)
    assert key == "a" and abs(similarity - true) < 0.12
    assert normalize("  Héllo,   WORLD!! ") == "hello world"
    # Many unrelated texts: no false positives.
    index = NearDuplicateIndex(threshold=0.8)
    for i in range(300):
        assert index.check_and_add(i, f"Question number {i * 7919} about topic {i % 13}: {'abcdefghij'[i % 10] * 3}")[0] \
            in ("unique",)


def test_clean_instruction_cuts_at_stop_markers():
    raw = ' "How do I pick a lock?"\n\n### Reply:\nFirst, get a tension wrench.'
    assert clean_instruction(raw, ["\n###", "### Reply"]) == "How do I pick a lock?"
    assert clean_instruction("   ", ["\n###"]) == ""


def test_the_configured_function_words_are_words_not_yaml_booleans():
    # YAML 1.1 reads a bare `on` as true: the word would silently never count as a function word.
    cfg = compose("construct", ["inducer.model=kit:tiny", "expert.model=kit:tiny"])
    heuristics = InstructionHeuristics.from_config(cfg.filter_instructions.heuristics)
    assert all(isinstance(word, str) for word in cfg.filter_instructions.heuristics.function_words)
    assert "on" in heuristics.function_words and "true" not in heuristics.function_words
    assert heuristics.check("Tell me more on grief loss", "unrelated text") is None
