"""Training for the VLM families with a recipe (LLaVA-1.5, LLaVA-NeXT): chat templates, the conversation
dataset and collator, the trainer (projector pretraining, instruction tuning, full or LoRA, DeepSpeed),
atomic Trainer checkpoints and the LoRA merge.

Submodules (import them directly; nothing heavy is imported here):
  templates   -- `get_template`: LLaVA conversation templates as data (plain, vicuna_v1, llama_3, qwen_1_5, ...)
  data        -- `LlavaConversationDataset`, `LlavaDataCollator`, `LengthGroupedSampler`
  train       -- `train_llava`: LLaVA's option names, per-part learning rates, LoRA
  checkpoints -- checkpoints written atomically, `latest`
  merge       -- `merge_lora`: fold LoRA into a plain transformers checkpoint
"""
