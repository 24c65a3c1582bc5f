"""Every tiny-model builder in one place, for the offline demo and the tests (nothing is downloaded).

Submodules (import them directly; nothing heavy is imported here):
  tiny        -- tiny random CLIP / SigLIP checkpoints (real CLIP BPE tokenizer)
  tiny_lm     -- tiny random Qwen2 / Llama-3 / Mistral LMs with offline BPE tokenizers
  tiny_llava  -- a tiny LLaVA-NeXT checkpoint
  tiny_t5     -- a tiny sentencepiece tokenizer for the T5 decoder of READ
"""
