#!/usr/bin/env python
"""Supervised fine-tuning (SFT) with TRL's SFTTrainer: `safer-instruct train sft [overrides]`.

Trains on an instruction dataset (Alpaca/ShareGPT/messages) or on the chosen responses of a
preference source, with the model's one prompt format; loss on the response tokens only.

    safer-instruct train sft model=tiny                                   # bundled demo instructions
    safer-instruct train sft model=smollm2-135m peft=lora data=constructed data.path=outputs/construct/demo
    accelerate launch --config_file conf/accelerate/zero3.yaml train/sft.py model=alpaca-7b \\
        train=sft_paper train.deepspeed=null data=safer_instruct_release out_dir=outputs/sft-si
    srun python train/sft.py model=alpaca-7b train=sft_paper out_dir=$OUT      # one task per GPU

Writes into out_dir: model/ (and adapter/ with LoRA/QLoRA), metrics.jsonl, train_summary.json,
data_stats.json, checkpoints (rerunning with the same out_dir resumes), config.yaml, versions.json.
"""

from safer_instruct.training.distributed import slurm_to_torch_env

slurm_to_torch_env()  # before anything reads RANK: srun without a launcher gives only SLURM_* variables

from safer_instruct.config import stage_main  # noqa: E402


@stage_main("train_sft")
def main(cfg, out_dir):
    from safer_instruct.training.run import run_sft

    return run_sft(cfg, out_dir)


if __name__ == "__main__":
    main()
