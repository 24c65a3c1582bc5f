"""VLMs that take a CLIP / SigLIP tower: the architectures, build from (LM, encoder), swap a tower in, and the
saved-tower check (the saved tower equals the trained one, bitwise and finite).

Submodules (import them directly; nothing heavy is imported here):
  architectures -- the one place that knows each architecture: classes, processor, image flags, strict loading
  build         -- `build_llava`: a LLaVA from a causal LM and an encoder
  families      -- the registry of VLM families that take a CLIP / SigLIP tower 1:1 (tower paths, feature rule,
                   probe inputs, encoder -> tower mapping); refuses own-ViT VLMs by tower type
  swap          -- `swap_vision_tower`: replace the tower(s) of an existing checkpoint of any family
  tower_check   -- the saved tower read back with plain transformers; `verify --encoder` at the projector input
  hub_layout    -- `save_vlm`: every VLM checkpoint written in the published Hub layout (older readers load it)
"""
