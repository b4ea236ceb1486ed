"""Facts about Z-Image-Turbo and its Qwen3 text encoder (see ../shared/REFERENCE.md)."""

# Qwen3 special-token ids (the real ones; the tiny tokenizer puts them at the same ids).
ENDOFTEXT_ID = 151643  # also the pad token
IM_START_ID = 151644
IM_END_ID = 151645
VISION_START_ID = 151652
VISION_END_ID = 151653
IMAGE_PAD_ID = 151655
THINK_START_ID = 151667
THINK_END_ID = 151668

# Caption-length limits. The DiT puts caption tokens at RoPE positions 1..P (P = length rounded up to 32)
# on an axis of 1536 entries, image tokens after them, so P <= 1504. diffusers truncates at 512.
HARD_MAX_TEXT_TOKENS = 1504
DIFFUSERS_MAX_SEQUENCE_LENGTH = 512
SEQ_MULTIPLE = 32

# Official Turbo recipe.
DEFAULT_STEPS = 8
# diffusers' ZImageImg2ImgPipeline default: the fraction of the schedule run from an init image.
DEFAULT_STRENGTH = 0.6
DEFAULT_SHIFT = 3.0
DEFAULT_GUIDANCE_SCALE = 0.0
DEFAULT_HIDDEN_LAYER = -2
DEFAULT_SIZE = 1024
SIZE_MULTIPLE = 16  # VAE /8 and 2x2 patches
# diffusers' ZImagePipeline defaults for its two CFG refinements: both off.
DEFAULT_CFG_NORMALIZATION = False
DEFAULT_CFG_TRUNCATION = 1.0

# Where a run's shift came from (recorded as ``shift_source`` with the image and in the results store). The
# shift is a setting that stays unset until a checkpoint is known: then its scheduler_config.json decides.
SHIFT_FROM_FLAG = "--shift/--set"
SHIFT_FROM_CONFIG = "config file"
SHIFT_FROM_EXPERIMENT = "experiment"
SHIFT_FROM_CALLER = "caller"  # the library API: a shift given to GenerationRequest / LlmDitPipeline.generate
SHIFT_FROM_CHECKPOINT = "checkpoint scheduler_config"
SHIFT_FROM_DEFAULT = "built-in default"  # no scheduler config known (components in memory)

# VAE latent normalisation (FLUX VAE).
VAE_SCALING_FACTOR = 0.3611
VAE_SHIFT_FACTOR = 0.1159

LONG_PROMPT_MODES = ("truncate", "interpolate", "pool", "attention_pool", "none")
FILL_MODES = ("content_only", "pad_end_zero", "pad_end_mean", "pad_middle_zero", "filler_repeat")
REFINER_MODES = ("default", "skip", "single", "double")
# "diffusers": pad a batch to at least DIFFUSERS_MAX_SEQUENCE_LENGTH, as ZImagePipeline does. Padding does not change
# the kept rows mathematically, but in bf16 the encoder's rounding depends on the padded length (measured on an
# H200: up to 0.8 in hidden states of magnitude 26), so only this makes embeddings bit-identical to diffusers'.
PADDING_MODES = ("diffusers", "longest")
# Seeds are stored as SQLite integers (signed 64-bit).
MAX_SEED = 2**63 - 1
# Encoder settings fixed when the encoder loads (where and in which precision it runs): not per-call options,
# not experiment parameters.
ENCODER_LOAD_FIELDS: tuple[str, ...] = ("device", "torch_dtype")

# think_block keywords. The official path (diffusers / DiffSynth / Tongyi) uses NO think block.
THINK_NONE = "none"
THINK_EMPTY = "empty"
DEFAULT_THINK_BLOCK = THINK_NONE

# Conditioning sources and their operations (docs/conditioning.md).
CONDITIONING_SOURCES = ("text", "vl", "embedding")
VL_TOKEN_MODES = ("full", "text_only", "image_only", "image_no_markers")
VL_BLENDS = ("linear", "interpolate", "adain", "adain_per_dim", "style_only", "graduated", "attention_weighted")
GRADUATED_CURVES = ("linear", "ease_in", "ease_out")
VL_NORMALIZATIONS = ("none", "global", "per_dim", "hybrid")
OUTLIER_MASKS = ("none", "zero", "clamp", "scale")
EMBEDDING_FORMATS = ("chat", "raw", "instruction")
DEFAULT_OUTLIER_THRESHOLD = 10.0
# One VL layer default everywhere (CLI, config, API, experiments): the seed project had three (-8, -6, -2). -2 is the
# layer Z-Image reads from Qwen3-4B; the seeds' preference for -8 is a question for a vl_layer sweep, not a default.
DEFAULT_VL_LAYER = -2
DEFAULT_EMBEDDING_LAYER = -2
DEFAULT_CAPTION_PROMPT = "Describe this image in detail."  # llm-dit caption's instruction
DEFAULT_EMBEDDING_TASK = "Given a text prompt, retrieve images that match it"
