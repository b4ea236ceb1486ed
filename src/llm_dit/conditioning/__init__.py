"""Conditioning: from a prompt to the caption features ``[L, 2560]`` the DiT reads. The chat format, the Qwen3
text encoder (hidden states of any layer, blends), pure embedding operations (long-prompt compression, fill modes)
and embedding statistics. Other conditioning sources (Qwen3-VL, Qwen3-Embedding) belong here too.

May import models/ and the shared leaves; never generation/ or anything above it.
"""
