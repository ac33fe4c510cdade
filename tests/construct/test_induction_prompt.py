"""The reversed model's prompt travels with it: `train reverse` saves its template and prompt budget, and
`construct`'s induce phase prompts the model with that template, each corpus text cut exactly as
training cut its responses (the real tiny model trained a few steps; the induce requests go to the
tests' loopback server, which records them).
"""

import json
import shutil

import pytest

from safer_instruct.config import compose
from safer_instruct.construct.pipeline import run_construct
from safer_instruct.data.instructions import InstructionRecord
from safer_instruct.errors import ConfigError
from safer_instruct.formatting import render_reverse_prompt, reverse_template
from safer_instruct.model_kit import load_tokenizer
from safer_instruct.training.preprocess import Encoder, reverse_columns
from safer_instruct.training.run import run_reverse
from tests.helpers.servers import FaultServer
from tests.training.helpers import stage_config, write_jsonl

TEMPLATE = "name: custom-reverse\nversion: 7\ntemplate: \"Guess the question.\\n\\n## Answer given:\\n{response}\\n\\n## Question:\"\n"
MAX_LENGTH, MAX_PROMPT = 96, 48
LONG = " ".join(f"Sentence {i} of a long answer that goes on about bread, ovens and flour." for i in range(40))
SHORT = "Paris is the capital of France."


@pytest.fixture(scope="module")
def reversed_model(tmp_path_factory):
    """The tiny model trained 2 steps as a reversed model with a template of the test's own."""
    root = tmp_path_factory.mktemp("reverse")
    template = root / "my_reverse.yaml"
    template.write_text(TEMPLATE)
    rows = [{"conversations": [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": answer}]}
            for i, answer in enumerate([LONG, SHORT, "Bread needs flour.", "Ovens get hot."])]  # fmt: skip
    out = root / "run"
    cfg = stage_config("train_reverse", out, "model=tiny", "data=sharegpt", f"data.path={write_jsonl(root / 'c.jsonl', rows)}",
                       "data.format=auto", "train.max_steps=2", "train.save_strategy=no", f"reverse_prompt={template}",
                       f"model.max_length={MAX_LENGTH}", f"model.max_prompt_length={MAX_PROMPT}")  # fmt: skip
    run_reverse(cfg, out)
    return root, out / "model"


def induce(root, model, name, *extra):
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": LONG, "category": "c"}, {"text": SHORT, "category": "c"}])
    out = root / name
    with FaultServer() as server:
        cfg = compose("construct", [f"out_dir={out}", f"cache.dir={root / name / 'cache'}", "tracking.mode=disabled",
                                    "phases=[induce]", "corpus=file", f"corpus.path={corpus}", f"inducer.model={model}",
                                    f"inducer.base_url={server.base_url}", "inducer.max_retries=0",
                                    "induce.samples_per_text=1", "expert.model=unused", *extra])  # fmt: skip
        stats = run_construct(cfg, out)
        prompts = [body["prompt"] for body in server.stats()["bodies"]]
    return stats, prompts


def test_induction_uses_the_template_and_the_cut_saved_with_the_model(reversed_model):
    root, model = reversed_model
    card = json.loads((model / "reverse_prompt.json").read_text())
    assert (card["name"], card["version"], card["tag"]) == ("custom-reverse", 7, "custom-reverse@v7")
    assert card["truncation"]["max_prompt_tokens"] == MAX_PROMPT and card["truncation"]["max_length"] == MAX_LENGTH

    stats, prompts = induce(root, model, "induce")
    assert len(prompts) == 2
    template = reverse_template(str(root / "my_reverse.yaml"))
    assert render_reverse_prompt(SHORT, template) in prompts  # the custom template, not conf/prompts/reverse.yaml
    long_prompt = next(p for p in prompts if p != render_reverse_prompt(SHORT, template))
    assert long_prompt.startswith("Guess the question.\n\n## Answer given:\nSentence 0 of a long answer")
    assert long_prompt.endswith("\n\n## Question:") and "Sentence 39" not in long_prompt

    # The training prompt of the same long response (the training code path, same tokenizer and
    # budget): the same text, token for token, within the budget; the instruction kept whole.
    tokenizer = load_tokenizer(str(model))
    encoder = Encoder(tokenizer, MAX_LENGTH, MAX_PROMPT)
    example = InstructionRecord("Question 0?", LONG)
    columns = reverse_columns(encoder, template, [example])
    ids, mask = columns["input_ids"][0], columns["completion_mask"][0]
    train_prompt_ids = [t for t, m in zip(ids, mask, strict=True) if not m]
    assert encoder.encode_ids([long_prompt], [[tokenizer.eos_token_id]])[0][0] == train_prompt_ids
    assert tokenizer.decode(train_prompt_ids, skip_special_tokens=True) == long_prompt
    assert len(train_prompt_ids) <= MAX_PROMPT and encoder.stats.prompts_truncated == 1
    assert tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m][:-1]) == "Question 0?"

    assert stats["phases"]["induce"]["inputs_cut"] == 1
    recorded = stats["provenance"]["reverse_prompt"]
    assert (recorded["tag"], recorded["source"], recorded["model"]) == ("custom-reverse@v7", "model", str(model))
    assert recorded["truncation"]["max_prompt_tokens"] == MAX_PROMPT
    assert stats["provenance"]["templates"]["reverse"] == "custom-reverse@v7"


def test_a_configured_template_must_match_the_saved_one(reversed_model):
    root, model = reversed_model
    with pytest.raises(ConfigError, match=r"induce.reverse_prompt=reverse_paper \(reverse-paper@v1\) is not the "
                                          r"template the reversed model .* \(custom-reverse@v7"):
        induce(root, model, "mismatch", "induce.reverse_prompt=reverse_paper")
    # The same template named explicitly is accepted.
    stats, _ = induce(root, model, "explicit", f"induce.reverse_prompt={root / 'my_reverse.yaml'}")
    assert stats["provenance"]["reverse_prompt"]["source"] == "model"


def test_a_model_saved_with_a_card_of_before_template_names_is_prompted_the_same(reversed_model, tmp_path):
    """A reversed model trained before templates had a name (its card: `version: custom-reverse-v7`) is
    prompted with its template as before, recorded as custom-reverse@v7."""
    root, model = reversed_model
    legacy = tmp_path / "legacy_model"
    shutil.copytree(model, legacy)
    card = json.loads((legacy / "reverse_prompt.json").read_text())
    old_card = {"version": "custom-reverse-v7", "template": card["template"], "truncation": card["truncation"]}
    (legacy / "reverse_prompt.json").write_text(json.dumps(old_card))
    stats, prompts = induce(root, legacy, "legacy")
    _, current = induce(root, model, "current")
    assert sorted(prompts) == sorted(current) and len(prompts) == 2
    assert stats["provenance"]["templates"]["reverse"] == "custom-reverse@v7"
