"""Models from disk and built offline: finding, validating, fingerprinting and loading checkpoints (the official
diffusers layout), device and dtype names, the offline Qwen3 tokenizer and the built-in tiny model set.

Every layer loads something, so this is the lowest layer above the shared leaves (constants, errors, files, config):
it imports nothing else of llm_dit. Heavy libraries (transformers, diffusers) are imported inside the functions
that load models, never at module level.
"""
