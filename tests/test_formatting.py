import pytest

from safer_instruct.formatting import PromptFormat, alpaca_template
from safer_instruct.model_kit import load_tokenizer


def test_alpaca_prompt_and_completion():
    tokenizer = load_tokenizer("kit:tiny")
    fmt = PromptFormat("alpaca", tokenizer)
    assert fmt.prompt("Name a fruit {x}.") == (  # Stanford Alpaca's prompt_no_input, verbatim
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a fruit {x}.\n\n### Response:\n")  # fmt: skip
    assert fmt.prompt("Describe it.", input="an {apple}") == (  # prompt_input
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
        "response that appropriately completes the request.\n\n### Instruction:\nDescribe it.\n\n### Input:\n"
        "an {apple}\n\n### Response:\n")  # fmt: skip
    assert (alpaca_template().tag, alpaca_template(with_input=True).tag) == ("alpaca@v1", "alpaca-input@v1")
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
