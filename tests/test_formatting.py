import pytest

from safer_instruct.formatting import ALPACA_PROMPT, PromptFormat
from safer_instruct.model_kit import load_tokenizer


def test_alpaca_prompt_and_completion():
    tokenizer = load_tokenizer("kit:tiny")
    fmt = PromptFormat("alpaca", tokenizer)
    assert fmt.prompt("Name a fruit.") == ALPACA_PROMPT.format(instruction="Name a fruit.")
    assert "### Input:\nan apple" in fmt.prompt("Describe it.", input="an apple")
    assert fmt.completion("Apple.") == "Apple." + tokenizer.eos_token


def test_chat_completion_is_what_the_template_renders_after_the_prompt():
    tokenizer = load_tokenizer("kit:tiny")
    fmt = PromptFormat("chat", tokenizer)
    prompt, completion = fmt.prompt("Hi"), fmt.completion("Hello!", "Hi")
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], tokenize=False
    )
    assert prompt + completion == full
    assert completion == "Hello!<|im_end|>\n"


def test_bad_styles_fail_with_advice():
    with pytest.raises(ValueError, match="'alpaca' or 'chat'"):
        PromptFormat("llama")

    class NoTemplate:
        chat_template = None
        eos_token = "</s>"

    with pytest.raises(ValueError, match="prompt_format=alpaca"):
        PromptFormat("chat", NoTemplate())
