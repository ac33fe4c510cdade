"""Sharded induction reads the construct step's saved config, and each shard's config is that one
with the shard's texts, cache and out_dir."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from safer_instruct.config import compose, to_plain
from safer_instruct.data.corpus import read_corpus
from safer_instruct.pipeline import shards
from safer_instruct.pipeline.plan import build_plan, step_config, write_config
from safer_instruct.stages import config_file_args, load_config_file


def test_shards_split_the_corpus_the_step_reads_and_keep_its_other_settings(tmp_path):
    plan = build_plan(compose("run", ["experiment=smoke", "dry_run=true"]), tmp_path / "exp")
    config_file = write_config(plan, "construct")
    cfg = shards.construct_config(["construct", *config_file_args(config_file)])
    assert to_plain(cfg) == to_plain(step_config(plan, "construct"))
    # The same config from overrides, as a job script written by hand passes them.
    by_hand = shards.construct_config(["construct", *plan.overrides("construct")])
    assert to_plain(by_hand) == to_plain(cfg)

    whole = [text.text for text in read_corpus(OmegaConf.to_container(cfg.corpus, resolve=True))]
    assert len(whole) == 6  # smoke: corpus.limit=6
    parts = []
    for index in range(2):
        path = tmp_path / f"shard{index}.jsonl"
        assert shards.write_shard(cfg, index, 2, path) == 3
        parts.append([json.loads(line)["text"] for line in path.read_text().splitlines()])
        shard_dir = tmp_path / "exp" / "construct" / "shards" / str(index)
        shard = shards.shard_config(cfg, path, shard_dir)
        # Induction only, over the shard's texts, with its own cache, everything else as the step's.
        assert list(shard.phases) == ["induce"] and shard.out_dir == str(shard_dir)
        assert shard.cache.dir == str(shard_dir / "llm")
        assert [t.text for t in read_corpus(OmegaConf.to_container(shard.corpus))] == parts[-1]
        assert shard.inducer == to_plain(cfg)["inducer"] and shard.induce == to_plain(cfg)["induce"]
        saved = shard_dir / "config.yaml"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(OmegaConf.to_yaml(shard))
        assert to_plain(load_config_file(saved)) == to_plain(shard)  # what the shard's construct reads
    assert parts == [whole[0::2], whole[1::2]]


def test_merge_finds_the_cache_dir_in_the_saved_config(tmp_path):
    plan = build_plan(compose("run", ["experiment=smoke", "dry_run=true", f"cache.dir={tmp_path / 'cache'}"]),
                      tmp_path / "exp")  # fmt: skip
    config_file = write_config(plan, "construct")
    assert shards.merge_caches(["construct", *config_file_args(config_file)]) == 0  # no shard caches yet
    assert Path(str(shards.construct_config(["construct", *config_file_args(config_file)]).cache.dir)) == tmp_path / "cache"
