"""Continual pretraining of CLIP/SigLIP encoders: the one trainer for every ReasonCLIP stage.

Stages are configs, not scripts (recipes in train/*.yaml):

    stage0  plain contrastive on descriptive or reasoning captions (optionally with hard negatives)
    stage1  dual stream: w(t) * CLIP(img, desc) + (1 - w(t)) * CLIP(img, reason) + L2 anchor
    stage2  reasoning captions + category heads (separate LRs per parameter group)
    read    hard negatives + T5 reconstruction + paraphrase alignment

Entry points::

    from reasonclip_llava.pretrain.config import load_config
    from reasonclip_llava.pretrain.trainer import pretrain
    final_ckpt = pretrain(load_config("train/stage1_b32.yaml", ["--optim.lr=5e-5"]))

    python -m reasonclip_llava.pretrain train/stage1_b32.yaml --runtime.resume_from=latest
    torchrun --nproc_per_node=8 -m reasonclip_llava.pretrain train/stage1_b32.yaml   # multi-GPU

Modules: config (typed recipe + overrides), schedule (w(t), LR), objective (the stage's loss terms),
data (datasets, collator, resumable sampler), trainer (the loop, checkpoints, resume), demo (tiny
offline run on synthetic data).
"""
