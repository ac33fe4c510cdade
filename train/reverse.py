#!/usr/bin/env python
"""Reversed instruction tuning: `safer-instruct train reverse [overrides]`.

SFT on (instruction, response) pairs turned around: the model reads a response in the versioned
template `conf/prompts/reverse.yaml` and learns to write the instruction it answers (loss on the
instruction tokens only). The construct stage's `induce` step prompts the result with the same
template to turn undesired texts into instructions.

    safer-instruct train reverse model=tiny                         # bundled demo instructions
    safer-instruct train reverse model=smollm2-135m peft=lora out_dir=outputs/reverse-demo
    accelerate launch --config_file conf/accelerate/zero3.yaml train/reverse.py model=llama-7b \\
        data=sharegpt data.path=/data/sharegpt.json train=reverse_paper train.deepspeed=null out_dir=...

Writes into out_dir what `train sft` writes; out_dir/model/reverse_prompt.json records the template.
"""

from safer_instruct.training.distributed import slurm_to_torch_env

slurm_to_torch_env()  # before anything reads RANK: srun without a launcher gives only SLURM_* variables

from safer_instruct.config import stage_main  # noqa: E402


@stage_main("train_reverse")
def main(cfg, out_dir):
    from safer_instruct.training.run import run_reverse

    return run_reverse(cfg, out_dir)


if __name__ == "__main__":
    main()
