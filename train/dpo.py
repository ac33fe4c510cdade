#!/usr/bin/env python
"""Direct preference optimization (DPO) with TRL's DPOTrainer: `safer-instruct train dpo [overrides]`.

Starts from the SFT model (`model.path=<sft out_dir>/model`), which is also the reference. Reference
log-probs are computed once per (reference model, dataset, tokenization) and persisted, so sweeps
over beta or the learning rate reuse them.

    safer-instruct train dpo model=tiny data=constructed data.path=outputs/construct/demo
    safer-instruct train dpo -m model=smollm2-135m peft=lora data=safer_instruct_release \\
        train.beta=0.05,0.1,0.5 out_dir=outputs/dpo-sweep
    accelerate launch --config_file conf/accelerate/zero3.yaml train/dpo.py model=alpaca-7b \\
        model.path=outputs/sft-si/model train=dpo_paper train.deepspeed=null out_dir=outputs/dpo-si
    srun python train/dpo.py model=alpaca-7b model.path=... train=dpo_paper out_dir=$OUT

Writes into out_dir what `train sft` writes; train_summary.json also says whether the reference
log-probs were reused or computed (`ref_logps`).
"""

from safer_instruct.training.distributed import slurm_to_torch_env

slurm_to_torch_env()  # before anything reads RANK: srun without a launcher gives only SLURM_* variables

from safer_instruct.config import stage_main  # noqa: E402


@stage_main("train_dpo")
def main(cfg, out_dir):
    from safer_instruct.training.run import run_dpo

    return run_dpo(cfg, out_dir)


if __name__ == "__main__":
    main()
