"""LLaVA-NeXT recipe: tiny LMs for tests, conversation templates, the conversation dataset and collator.

Submodules (import them directly; nothing heavy is imported here):
  tiny_lm    -- `build_tiny_lm`: tiny random Qwen2 / Llama-3 / Mistral LMs with offline BPE tokenizers
  templates  -- `get_template`: LLaVA conversation templates as data (plain, vicuna_v1, llama_3, qwen_1_5, ...)
  data       -- `LlavaConversationDataset`, `LlavaDataCollator`, `LengthGroupedSampler`
"""
