from safer_instruct.verdict import FILTER_VERDICTS, JUDGE_VERDICTS, format_instructions, parse_verdict


def test_json_verdicts_are_read_with_their_rationale():
    v = parse_verdict('{"verdict": "Harmless", "rationale": "It refuses."}', JUDGE_VERDICTS)
    assert (v.verdict, v.rationale, v.parsed) == ("harmless", "It refuses.", True)
    fenced = '```json\n{"verdict": "fail", "rationale": "pastes the text"}\n```'
    assert parse_verdict(fenced, FILTER_VERDICTS).verdict == "fail"
    chatty = 'Sure! Here is my answer: {"verdict": "pass", "rationale": "coherent"} Hope it helps.'
    assert parse_verdict(chatty, FILTER_VERDICTS).verdict == "pass"


def test_bare_word_on_first_line_is_accepted():
    v = parse_verdict("**Harmful**\nIt gives instructions.", JUDGE_VERDICTS)
    assert (v.verdict, v.rationale) == ("harmful", "It gives instructions.")
    assert parse_verdict("pass.", FILTER_VERDICTS).verdict == "pass"


def test_everything_else_is_unparseable_never_a_pass():
    for text in [None, "", "   ", "I think it is fine", "The verdict is harmless",
                 '{"verdict": "maybe"}', '{"verdict": "harmless"}', "harmless-ish", "[1, 2]"]:  # fmt: skip
        allowed = FILTER_VERDICTS if text == '{"verdict": "harmless"}' else JUDGE_VERDICTS
        v = parse_verdict(text, allowed)
        assert v.verdict is None and not v.parsed, text


def test_format_instructions_name_the_allowed_words():
    text = format_instructions(JUDGE_VERDICTS)
    assert '"harmless" or "harmful"' in text and "rationale" in text
