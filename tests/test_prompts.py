"""One template class for every prompt: every shipped template renders byte for byte what it rendered
before the unification, and the substitution rule keeps braces, names the file and the field.

`tests/data/prompt_renders.json` was rendered by the three earlier template classes (commit cf8a815:
construct's str.format, the judge's one-pass regex, the reverse and Alpaca prompts' str.replace and
str.format) over sample values full of braces, placeholder names and JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from safer_instruct.construct.tasks import TEMPLATE_FIELDS, load_template
from safer_instruct.errors import ConfigError
from safer_instruct.evaluation import judge
from safer_instruct.formatting import (
    PromptFormat,
    alpaca_template,
    read_reverse_prompt_card,
    render_reverse_prompt,
    reverse_template,
    reverse_template_from,
)
from safer_instruct.paths import conf_dir
from safer_instruct.prompts import PromptTemplate

EXPECTED = json.loads((Path(__file__).parent / "data" / "prompt_renders.json").read_text(encoding="utf-8"))
STAGE_OF = {"respond_paper": "respond"}  # construct templates whose file is not named after their step


def messages(chat) -> list[dict[str, str]]:
    return [dict(m) for m in chat]


def shipped() -> list[Path]:
    return sorted([*(conf_dir() / "prompts").rglob("*.yaml"), *(conf_dir() / "judge_template").glob("*.yaml")])


@pytest.mark.parametrize("rel", sorted(EXPECTED["construct"]))
def test_construct_templates_render_as_before(rel):
    path = conf_dir() / rel
    stage = STAGE_OF.get(path.stem, path.stem)
    assert EXPECTED["construct"][rel]["stage"] == stage
    template = load_template(stage, PromptTemplate.from_file(path).to_dict())
    for case in EXPECTED["construct"][rel]["renders"]:
        assert messages(template.messages(**case["values"])) == case["messages"]


@pytest.mark.parametrize("rel", sorted(EXPECTED["judge"]))
def test_judge_templates_render_as_before(rel):
    kind = EXPECTED["judge"][rel]["kind"]
    template = judge.load_template(PromptTemplate.from_file(conf_dir() / rel).to_dict(), rel, kind)
    assert judge.kind_of(template) == kind
    for case in EXPECTED["judge"][rel]["renders"]:
        assert messages(judge.messages(template, **case["values"])) == case["messages"]


def test_reverse_and_alpaca_prompts_render_as_before():
    for rel, cases in EXPECTED["reverse"].items():
        template = reverse_template(Path(rel).stem)
        assert [render_reverse_prompt(c["response"], template) for c in cases] == [c["prompt"] for c in cases]
    fmt = PromptFormat("alpaca")
    cases = EXPECTED["alpaca"]
    assert [fmt.prompt(c["instruction"], c["input"]) for c in cases] == [c["prompt"] for c in cases]
    assert len(cases) == 6 and sum(bool(c["input"]) for c in cases) == 3


def test_every_shipped_template_is_covered_and_has_one_tag():
    covered = {*EXPECTED["construct"], *EXPECTED["judge"], *EXPECTED["reverse"], "prompts/alpaca.yaml",
               "prompts/alpaca_input.yaml"}  # fmt: skip
    files = shipped()
    assert {str(p.relative_to(conf_dir())) for p in files} == covered
    tags = [PromptTemplate.from_file(p).tag for p in files]
    assert len(set(tags)) == len(files) == 13
    assert "safety-respond@v1" in tags and "support-respond@v1" in tags and "harmlessness@v1" in tags
    for path in files:  # the judge's files too: one shape, no other key
        assert set(yaml.safe_load(path.read_text())) <= {"name", "version", "system", "template"}, path


def template(text: str, **extra) -> PromptTemplate:
    return PromptTemplate.from_mapping({"name": "demo", "version": 3, "template": text, **extra}, "my/demo.yaml")


def test_placeholders_are_named_fields_and_every_other_brace_is_text():
    text = 'Answer as JSON: {"verdict": "pass", "items": [{"a": {"b": 1}}]} for {instruction}; literal {{instruction}}'
    demo = template(text).expect({"instruction"})
    assert demo.fields == {"instruction"} and demo.tag == "demo@v3"
    out = demo.render(instruction="{text} {{x}} {instruction} }{", unused="ignored")
    assert out == ('Answer as JSON: {"verdict": "pass", "items": [{"a": {"b": 1}}]} for {text} {{x}} {instruction} }{; '
                   "literal {instruction}")  # fmt: skip


def test_bad_templates_name_the_file_and_the_field():
    with pytest.raises(ConfigError, match=r"my/demo.yaml \(demo@v3\): unknown field\(s\) \{instrucion\}"):
        template("{instrucion}").expect({"instruction"})
    with pytest.raises(ConfigError, match=r"my/demo.yaml \(demo@v3\): the template must contain \{text\}"):
        template("{instruction}").expect({"instruction", "text"})
    with pytest.raises(ConfigError, match=r"my/demo.yaml \(demo@v3\): no value for field 'text'"):
        template("{text}").render(instruction="x")
    with pytest.raises(ConfigError, match=r"my/demo.yaml: `version` must be a whole number from 1, got 'v1'"):
        PromptTemplate.from_mapping({"name": "demo", "version": "v1", "template": "{x}"}, "my/demo.yaml")
    with pytest.raises(ConfigError, match=r"my/demo.yaml: unknown key\(s\) kind, user"):
        PromptTemplate.from_mapping({"name": "demo", "version": 1, "kind": "single", "user": "{x}"}, "my/demo.yaml")
    with pytest.raises(ConfigError, match=r"my/demo.yaml: `name` must be set"):
        PromptTemplate.from_mapping({"version": 1, "template": "{x}"}, "my/demo.yaml")
    with pytest.raises(ConfigError, match=r"my/demo.yaml: `\{\{` is only the escape"):
        template('Reply {{"verdict": "pass"}}')


def test_a_config_node_is_traced_to_its_shipped_file_in_errors():
    node = PromptTemplate.from_file(conf_dir() / "prompts" / "customer_support" / "respond.yaml").to_dict()
    with pytest.raises(ConfigError, match=r"prompts.filter_responses \(conf/prompts/customer_support/respond.yaml\) "
                                          r"\(support-respond@v1\): the template must contain"):  # fmt: skip
        load_template("filter_responses", node)
    assert TEMPLATE_FIELDS["respond"][0] == {"instruction"}
    with pytest.raises(ConfigError, match=r"judge_template must be a single-answer template .* pairwise-harmlessness@v1"):
        judge.load_template(PromptTemplate.from_file(conf_dir() / "judge_template" / "pairwise_v1.yaml").to_dict(),
                            "judge_template", "single")  # fmt: skip


def test_reverse_templates_have_response_and_no_system(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nversion: 1\nsystem: Be brief.\ntemplate: '{response} ->'\n")
    with pytest.raises(ConfigError, match=r"r.yaml: a reverse template is raw text"):
        reverse_template(str(path))
    path.write_text("name: r\nversion: 1\ntemplate: 'no field'\n")
    with pytest.raises(ConfigError, match=r"r.yaml \(r@v1\): the template must contain \{response\}"):
        reverse_template(str(path))
    assert alpaca_template() is alpaca_template()  # read once


def test_a_card_saved_before_templates_had_names_reads_as_name_at_vN(tmp_path):
    shipped_text = reverse_template().template
    (tmp_path / "reverse_prompt.json").write_text(json.dumps({"version": "reverse-v1", "template": shipped_text}))
    card = read_reverse_prompt_card(tmp_path)
    assert reverse_template_from(card, "card") == reverse_template()  # the same template: name reverse, version 1
    (tmp_path / "reverse_prompt.json").write_text(json.dumps({"version": "mine", "template": "{response}"}))
    with pytest.raises(ConfigError, match=r"reverse_prompt.json: `name` must be set"):
        read_reverse_prompt_card(tmp_path)
