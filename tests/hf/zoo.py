"""A corpus of tiny Hugging Face ``transformers`` architectures, built offline with random weights.

Each :class:`Arch` builds one model from a tiny config (hidden 32, 2 layers, a few heads, vocab 99,
32x32 images, short audio) and describes forward's keyword inputs:

``inputs`` maps each keyword of forward, in order, to a spec tuple:

* ``("ids", shape, low, high)``: int64 ids in ``[low, high)``;
* ``("mask", shape)``: an int64 0/1 attention mask (declared with ``mask(...)``: right-padded rows);
* ``("float", shape, low, high)``: float32 values in ``[low, high]``.

Shapes mix ints and dim names; ``dims`` bounds every named dim (inclusive ``(min, max)``).

Nothing is downloaded: configs are built in code and weights are random (seeded), so
``HF_HUB_OFFLINE=1`` is fine. ``transformers`` is imported inside functions only.

Vanishing outputs: with the library's default init some CNNs give outputs of ~1e-26 or exactly 0.
Those entries have ``vanishing=True``; ``build(init="normal")`` re-initialises every weight with
``normal(0, 1/sqrt(fan_in))``, every 1-D scale to 1 +- 0.1 and every bias to 0 +- 0.1, which gives O(1)
outputs that depend on the input for every entry. ``build()`` (``init="default"``) keeps the library's
init, so both behaviours are available.

``tests/hf/test_corpus.py`` declares each entry as a ``@deployable`` test with ``tensor(...)`` and
``mask(...)`` inputs by keyword.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

VOCAB = 99
HIDDEN = 32
LAYERS = 2
HEADS = 4
INTER = 37
MAX_POS = 64

TEXT_DIMS = {"batch": (1, 2), "seq": (2, 12)}
SEQ2SEQ_DIMS = {"batch": (1, 2), "seq": (2, 12), "dec_seq": (2, 8)}
IMAGE_DIMS = {"batch": (1, 2)}
AUDIO_DIMS = {"batch": (1, 2), "samples": (400, 1200)}

IDS = ("ids", ("batch", "seq"), 0, VOCAB)
MASK = ("mask", ("batch", "seq"))
TYPES = ("ids", ("batch", "seq"), 0, 2)
DEC_IDS = ("ids", ("batch", "dec_seq"), 0, VOCAB)
PIXELS = ("float", ("batch", 3, 32, 32), -1.0, 1.0)
AUDIO = ("float", ("batch", "samples"), -1.0, 1.0)


@dataclass
class Arch:
    name: str
    family: str  # encoder | decoder | encoder-decoder | vision | audio
    model_class: str  # transformers class name
    config_class: str
    config: dict[str, Any]
    inputs: dict[str, tuple]
    dims: dict[str, tuple[int, int]]
    #: the library's default init gives a (near-)zero output (max |primary output| < 1e-3)
    vanishing: bool = False
    #: build with attn_implementation="eager" (False for the attention-free CNNs)
    eager_attn: bool = True
    notes: str = ""
    #: weight scale of ``build(init="normal")``: deep stacks of tiny layers need more than 1 for the input to
    #: still show in the output
    init_scale: float = 1.0
    post_config: Callable[[Any], None] | None = field(default=None, repr=False)

    def make_config(self):
        import transformers

        cfg = getattr(transformers, self.config_class)(**self.config)
        if self.post_config is not None:
            self.post_config(cfg)
        return cfg

    def build(self, init: str = "default", seed: int = 0):
        """The model in eval mode. ``init``: "default" (the library's) or "normal" (see module doc)."""
        import torch
        import transformers

        cls = getattr(transformers, self.model_class)
        cfg = self.make_config()
        torch.manual_seed(seed)
        if self.eager_attn:
            model = cls._from_config(cfg, attn_implementation="eager")
        else:
            model = cls(cfg)
        if init == "normal":
            reinit_normal(model, seed, self.init_scale)
        elif init != "default":
            raise ValueError(f"init={init!r}: use 'default' or 'normal'")
        return model.eval()


def reinit_normal(model, seed: int = 0, scale: float = 1.0) -> None:
    """Weights (dim >= 2) ~ normal(0, scale/sqrt(fan_in)); 1-D params get +-0.1 noise added."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=gen) * (scale / math.sqrt(fan_in)))
            elif name.endswith("weight"):  # norm scales: about 1 (a near-zero BatchNorm scale kills the signal)
                p.copy_(1 + torch.randn(p.shape, generator=gen) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


# ------------------------------------------------------------------------------ the corpus


def _text(name, family, model_class, config_class, config, inputs=None, dims=None, **kw) -> Arch:
    return Arch(name, family, model_class, config_class, config,
                inputs or {"input_ids": IDS, "attention_mask": MASK}, dims or dict(TEXT_DIMS), **kw)


_BERTLIKE = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                 intermediate_size=INTER, max_position_embeddings=MAX_POS)
_DECODER = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                intermediate_size=INTER, max_position_embeddings=MAX_POS, use_cache=False)
_BART = dict(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
             encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=INTER,
             decoder_ffn_dim=INTER, max_position_embeddings=MAX_POS, use_cache=False,
             pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
_S2S_INPUTS = {"input_ids": IDS, "attention_mask": MASK, "decoder_input_ids": DEC_IDS}
_VIT = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, intermediate_size=INTER)
_WAV2VEC2 = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                 intermediate_size=INTER, conv_dim=(32, 32, 32), conv_stride=(4, 4, 4), conv_kernel=(8, 8, 8),
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def _pixels(name, model_class, config_class, config, **kw) -> Arch:
    return Arch(name, "vision", model_class, config_class, config, {"pixel_values": PIXELS}, dict(IMAGE_DIMS), **kw)


def _audio(name, model_class, config_class, config, **kw) -> Arch:
    return Arch(name, "audio", model_class, config_class, config, {"input_values": AUDIO}, dict(AUDIO_DIMS), **kw)


ARCHS: list[Arch] = [
    # ---- encoders
    _text("bert", "encoder", "BertModel", "BertConfig", dict(_BERTLIKE, type_vocab_size=2),
          inputs={"input_ids": IDS, "attention_mask": MASK, "token_type_ids": TYPES}),
    _text("roberta", "encoder", "RobertaModel", "RobertaConfig", dict(_BERTLIKE, type_vocab_size=1, pad_token_id=1),
          notes="position ids come from input_ids != pad_token_id (1)"),
    _text("xlm_roberta", "encoder", "XLMRobertaModel", "XLMRobertaConfig",
          dict(_BERTLIKE, type_vocab_size=1, pad_token_id=1)),
    _text("distilbert", "encoder", "DistilBertModel", "DistilBertConfig",
          dict(vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTER,
               max_position_embeddings=MAX_POS)),
    _text("albert", "encoder", "AlbertModel", "AlbertConfig", dict(_BERTLIKE, embedding_size=16, type_vocab_size=2),
          inputs={"input_ids": IDS, "attention_mask": MASK, "token_type_ids": TYPES}),
    _text("electra", "encoder", "ElectraModel", "ElectraConfig", dict(_BERTLIKE, embedding_size=16, type_vocab_size=2),
          inputs={"input_ids": IDS, "attention_mask": MASK, "token_type_ids": TYPES}),
    _text("deberta_v2", "encoder", "DebertaV2Model", "DebertaV2Config",
          dict(_BERTLIKE, type_vocab_size=0, relative_attention=True, position_buckets=16, max_relative_positions=-1,
               pos_att_type=["p2c", "c2p"], position_biased_input=False),
          notes="relative attention with log buckets; a single (eager) attention path"),
    _text("mpnet", "encoder", "MPNetModel", "MPNetConfig", dict(_BERTLIKE, pad_token_id=1),
          notes="relative position bias; position ids from input_ids != pad_token_id (1)"),
    _text("clip_text", "encoder", "CLIPTextModel", "CLIPTextConfig",
          dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               intermediate_size=INTER, max_position_embeddings=MAX_POS, projection_dim=HIDDEN,
               bos_token_id=0, eos_token_id=2, pad_token_id=1),
          notes="causal mask + padding mask; pooled output at argmax(input_ids) (eos_token_id == 2: legacy path)"),
    # ---- decoders (causal LM heads)
    _text("gpt2", "decoder", "GPT2LMHeadModel", "GPT2Config",
          dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=INTER, n_positions=MAX_POS,
               bos_token_id=0, eos_token_id=2,
               use_cache=False)),
    _text("opt", "decoder", "OPTForCausalLM", "OPTConfig",
          dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               ffn_dim=INTER, word_embed_proj_dim=HIDDEN, max_position_embeddings=MAX_POS, use_cache=False,
               pad_token_id=1), notes="learned positions from attention_mask.cumsum"),
    _text("llama", "decoder", "LlamaForCausalLM", "LlamaConfig", dict(_DECODER, num_key_value_heads=2)),
    _text("mistral", "decoder", "MistralForCausalLM", "MistralConfig",
          dict(_DECODER, num_key_value_heads=2, sliding_window=8),
          notes="sliding_window=8 < max seq 12, so the sliding-window mask is exercised"),
    _text("qwen2", "decoder", "Qwen2ForCausalLM", "Qwen2Config", dict(_DECODER, num_key_value_heads=2)),
    _text("phi", "decoder", "PhiForCausalLM", "PhiConfig", dict(_DECODER, partial_rotary_factor=0.5)),
    _text("gemma", "decoder", "GemmaForCausalLM", "GemmaConfig", dict(_DECODER, num_key_value_heads=2, head_dim=8)),
    _text("gpt_neox", "decoder", "GPTNeoXForCausalLM", "GPTNeoXConfig", dict(_DECODER, rotary_pct=0.25)),
    _text("falcon", "decoder", "FalconForCausalLM", "FalconConfig",
          dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               max_position_embeddings=MAX_POS, use_cache=False, alibi=False, new_decoder_architecture=False,
               multi_query=True)),
    # ---- encoder-decoders
    _text("t5", "encoder-decoder", "T5Model", "T5Config",
          dict(vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=INTER, num_layers=LAYERS, num_decoder_layers=LAYERS,
               num_heads=HEADS, relative_attention_num_buckets=8, relative_attention_max_distance=16,
               use_cache=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
          inputs=dict(_S2S_INPUTS), dims=dict(SEQ2SEQ_DIMS), notes="relative position buckets (log-spaced)"),
    _text("bart", "encoder-decoder", "BartModel", "BartConfig", dict(_BART),
          inputs=dict(_S2S_INPUTS), dims=dict(SEQ2SEQ_DIMS)),
    _text("marian", "encoder-decoder", "MarianMTModel", "MarianConfig",
          dict(_BART, pad_token_id=98, eos_token_id=0, decoder_start_token_id=98, bos_token_id=None),
          inputs=dict(_S2S_INPUTS), dims=dict(SEQ2SEQ_DIMS), notes="sinusoidal positions; LM head (logits)"),
    _text("pegasus", "encoder-decoder", "PegasusModel", "PegasusConfig",
          dict(_BART, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, bos_token_id=None),
          inputs=dict(_S2S_INPUTS), dims=dict(SEQ2SEQ_DIMS)),
    Arch("whisper", "encoder-decoder", "WhisperModel", "WhisperConfig",
         dict(vocab_size=VOCAB, num_mel_bins=16, encoder_layers=LAYERS, decoder_layers=LAYERS, d_model=HIDDEN,
              encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=INTER,
              decoder_ffn_dim=INTER, max_source_positions=30, max_target_positions=40, use_cache=False,
              pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0,
              begin_suppress_tokens=None, suppress_tokens=None),
         {"input_features": ("float", ("batch", 16, 60), -1.0, 1.0), "decoder_input_ids": DEC_IDS},
         {"batch": (1, 2), "dec_seq": (2, 8)},
         notes="input_features length must be exactly 2 * max_source_positions (60)"),
    # ---- vision
    _pixels("vit", "ViTModel", "ViTConfig", dict(_VIT)),
    _pixels("deit", "DeiTModel", "DeiTConfig", dict(_VIT)),
    _pixels("beit", "BeitModel", "BeitConfig", dict(_VIT, use_relative_position_bias=True, use_mean_pooling=True),
            notes="relative position bias (interpolated to the image size)"),
    _pixels("swin", "SwinModel", "SwinConfig",
            dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4,
                 mlp_ratio=2.0, drop_path_rate=0.0),
            notes="windowed attention with shifted windows and padding to window multiples"),
    _pixels("convnext", "ConvNextModel", "ConvNextConfig",
            dict(num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[16, 32], depths=[2, 2], image_size=32),
            eager_attn=False),
    _pixels("resnet", "ResNetModel", "ResNetConfig",
            dict(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
            eager_attn=False),
    _pixels("mobilenet_v2", "MobileNetV2Model", "MobileNetV2Config",
            dict(num_channels=3, image_size=32, depth_multiplier=0.25, min_depth=8), eager_attn=False,
            notes="tf_padding=True pads by input-size-dependent amounts"),
    _pixels("efficientnet", "EfficientNetModel", "EfficientNetConfig",
            dict(image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320,
                 num_block_repeats=[1, 1, 1, 1, 1, 1, 1]), eager_attn=False, init_scale=1.8,
            notes="hidden_dim must equal round_filters(1280) = 320 at width 0.25"),
    _pixels("clip_vision", "CLIPVisionModel", "CLIPVisionConfig",
            dict(_VIT, projection_dim=HIDDEN)),
    # ---- audio
    _audio("wav2vec2", "Wav2Vec2Model", "Wav2Vec2Config", dict(_WAV2VEC2),
           notes="conv feature extractor (kernel 8, stride 4, x3) and grouped positional conv"),
    _audio("hubert", "HubertModel", "HubertConfig", dict(_WAV2VEC2)),
]

BY_NAME = {a.name: a for a in ARCHS}

# max |output| < 1e-3 with the library's default init (2.9e-26 and exactly 0): the corpus shows these fail as vacuous
_VANISHING = {"mobilenet_v2", "efficientnet"}
for _a in ARCHS:
    _a.vanishing = _a.name in _VANISHING
