"""Input inference (pytest_deploy.infer) and the one-line input grammar (pytest_deploy.declaration)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn

from pytest_deploy import SpecError, mask, tensor
from pytest_deploy.declaration import format_inputs, parse_inputs
from pytest_deploy.infer import infer_inputs, probe
from pytest_deploy.spec import InputSpace, MaskSpec

# ------------------------------------------------------------------------------------ grammar


@pytest.mark.parametrize("line", [
    "x: float32[batch, 3, 32, 32] in [-1, 1]; batch=1..8",
    "float32[batch, 16] in [-3, 3]; int64[batch] in [0, 4); batch=1..4",
    "input_ids: int64[batch, seq] in [0, 99); attention_mask: mask int64[batch, seq]; batch=1..2; seq=2..16",
    "pos: int64[batch] in [0, seq); x: float32[batch, seq, 8] in [-0.5, 2.25]; batch=1..3; seq=2..9",
    "m: mask bool[batch, seq] padding=left min_valid=2; batch=1; seq=2..5",
    "float64[]",
    "flags: bool[batch, 4]; batch=2..3",
    "float16[2, 3] in [1e-05, 0.1]",
])
def test_grammar_round_trip(line):
    decl = parse_inputs(line)
    assert format_inputs(decl.inputs, decl.dims) == line
    again = parse_inputs(format_inputs(decl.inputs, decl.dims))
    assert again.inputs == decl.inputs and again.dims == decl.dims


def test_grammar_maps_onto_tensor_mask_and_dims():
    decl = parse_inputs("ids: int64[batch, seq] in [0, 99); am: mask[batch, seq]; x: [batch, 4]; batch=1..2; seq=3")
    assert decl.keywords and decl.names == ["ids", "am", "x"]
    assert decl.inputs["ids"] == tensor("batch", "seq", dtype=torch.int64, low=0, high=99)
    assert decl.inputs["am"] == mask("batch", "seq")
    assert decl.inputs["x"] == tensor("batch", 4)  # dtype defaults to float32, range to tensor()'s default
    assert decl.dims == {"batch": (1, 2), "seq": (3, 3)}
    positional = parse_inputs("float32[batch, 16] in [-1, 1]; batch=1..8")
    assert not positional.keywords and positional.inputs == [tensor("batch", 16, low=-1.0, high=1.0)]
    # and the other way: specs written with tensor()/mask() have a line
    assert format_inputs({"a": mask("b", "s", padding="random")}, {"b": (1, 2), "s": 4}) == \
        "a: mask int64[b, s] padding=random; b=1..2; s=4"


@pytest.mark.parametrize("line, says", [
    ("", "empty"),
    ("x: float32[batch, 3]", "'batch' used by"),
    ("x: complex64[2]", "unknown dtype 'complex64'"),
    ("x: float32[2] in [0, 1)", "close the range with ']'"),
    ("x: int64[2] in [0, 9]", "close the range with ')'"),
    ("x: float32[2]; float32[3]", "name every input, or none"),
    ("x: float32[2]; x: float32[2]", "given twice"),
    ("m: mask int64[b] in [0, 2); b=1..2", "takes no range"),
    ("m: mask[b] padding=up; b=1..2", "padding='up'"),
    ("x: float32[2, -1]", "neither a size nor a dim name"),
    ("batch=1..4", "no input"),
    ("x = float32[2]", "not an input"),
    ("x: float32[b]; b=4..1", "min > max"),
    ("x: int64[2] in [0, pos)", "the bound 'pos' is not a dim"),
])
def test_grammar_refuses_with_the_item_and_the_fix(line, says):
    with pytest.raises(SpecError) as info:
        parse_inputs(line, where="--deploy-inputs")
    assert says in str(info.value) and "--deploy-inputs" in str(info.value)


# ------------------------------------------------------------------------------------ plain modules


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(5, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


class FlattenCNN(nn.Module):
    """Takes exactly 12x12 images: the head's size fixes the spatial sizes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 12 * 12, 2)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))


class Tagger(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        self.rnn = nn.LSTM(6, 8, batch_first=batch_first)

    def forward(self, x):
        return self.rnn(x)[0]


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, ids):
        return self.out(self.embed(ids).mean(1))


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x, y):
        return self.a(x) + y


def _check_runs_everywhere(model, decl):
    """The declaration resolves, and eager PyTorch runs at every corner."""
    InputSpace.resolve(decl.inputs, decl.dims, names=decl.names)
    assert probe(model, decl) is None


def test_mlp_from_linear_in_features():
    model = nn.Sequential(nn.Linear(7, 3), nn.ReLU(), nn.Linear(3, 1))
    decl = infer_inputs(model)
    assert decl.inputs == [tensor("batch", 7, low=-1.0, high=1.0)] and decl.dims == {"batch": (1, 4)}
    assert "0 = Linear(7" in decl.notes["input"]
    _check_runs_everywhere(model, decl)


def test_cnn_from_conv_in_channels_with_probed_spatial_dims():
    decl = infer_inputs(CNN())
    assert decl.inputs == [tensor("batch", 5, "height", "width", low=-1.0, high=1.0)]
    assert decl.dims == {"batch": (1, 4), "height": (8, 32), "width": (8, 32)}
    assert "5 channels" in decl.notes["x"]


def test_spatial_bounds_shrink_to_what_the_model_takes():
    model = FlattenCNN()
    decl = infer_inputs(model)
    assert decl.inputs == [tensor("batch", 3, 12, 12, low=-1.0, high=1.0)] and decl.dims == {"batch": (1, 4)}
    assert "fixed at 12" in decl.notes["height"] and "mat1 and mat2" in decl.notes["height"]
    _check_runs_everywhere(model, decl)


def test_conv1d_and_conv3d():
    decl = infer_inputs(nn.Conv1d(2, 4, 5))
    assert decl.inputs == [tensor("batch", 2, "length", low=-1.0, high=1.0)] and decl.dims["length"] == (8, 64)
    decl = infer_inputs(nn.Conv3d(1, 2, 3))
    assert decl.inputs == [tensor("batch", 1, "depth", "height", "width", low=-1.0, high=1.0)]


def test_embedding_gives_integer_ids_below_num_embeddings():
    decl = infer_inputs(Bag())
    assert decl.inputs == [tensor("batch", "seq", dtype=torch.int64, low=0, high=50)]
    assert decl.dims == {"batch": (1, 4), "seq": (2, 16)}


@pytest.mark.parametrize("batch_first", [True, False])
def test_lstm_follows_batch_first(batch_first):
    decl = infer_inputs(Tagger(batch_first))
    shape = ("batch", "seq", 6) if batch_first else ("seq", "batch", 6)
    assert decl.inputs == [tensor(*shape, low=-1.0, high=1.0)]
    assert decl.dims == {"batch": (1, 4), "seq": (2, 12)}


def test_a_second_input_of_unknown_meaning_is_refused_with_the_line_to_write():
    with pytest.raises(SpecError) as info:
        infer_inputs(Pair())
    text = str(info.value)
    assert "cannot infer input 'y' of Pair.forward" in text
    line = text.split("--deploy-inputs='", 1)[1].split("'", 1)[0]
    assert line.startswith("x: float32[batch, 4] in [-1, 1]; y: DTYPE[SHAPE]")


def test_a_model_with_no_known_layer_is_refused():
    class Scale(nn.Module):
        def forward(self, x):
            return x * 2

    with pytest.raises(SpecError, match="cannot infer input 'x' of Scale.forward: the model has no Conv, Linear"):
        infer_inputs(Scale())


def test_a_model_eager_pytorch_refuses_at_every_size_is_refused_with_its_error():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x).view(3, 7)

    with pytest.raises(SpecError) as info:
        infer_inputs(Broken())
    assert "eager PyTorch fails on the inferred input" in str(info.value)
    assert "RuntimeError" in str(info.value) and "--deploy-inputs=" in str(info.value)


def test_infer_inputs_is_public():
    import pytest_deploy

    assert pytest_deploy.infer_inputs is infer_inputs and "infer_inputs" in pytest_deploy.__all__


def test_not_a_module_is_refused():
    with pytest.raises(SpecError, match="is not a torch.nn.Module"):
        infer_inputs(lambda x: x)


# ------------------------------------------------------------------------------------ Hugging Face


transformers = pytest.importorskip("transformers")


def _hf(model_class, config_class, **config):
    torch.manual_seed(0)
    cfg = getattr(transformers, config_class)(**config)
    return getattr(transformers, model_class)(cfg).eval()


TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20)


def test_bert_input_ids_mask_and_token_types_from_its_config():
    model = _hf("BertModel", "BertConfig", vocab_size=41, type_vocab_size=3, max_position_embeddings=10, **TINY)
    decl = infer_inputs(model)
    assert decl.keywords
    assert decl.inputs == {"input_ids": tensor("batch", "seq", dtype=torch.int64, low=0, high=41),
                           "attention_mask": mask("batch", "seq"),
                           "token_type_ids": tensor("batch", "seq", dtype=torch.int64, low=0, high=3)}
    # seq stays within max_position_embeddings
    assert decl.dims == {"batch": (1, 2), "seq": (2, 8)}
    assert "config.vocab_size" in decl.notes["input_ids"] and "max_position_embeddings=10" in decl.notes["seq"]
    _check_runs_everywhere(model, decl)


def test_vit_pixel_values_from_channels_and_image_size():
    model = _hf("ViTModel", "ViTConfig", image_size=16, patch_size=8, num_channels=2, **TINY)
    decl = infer_inputs(model)
    assert decl.inputs == {"pixel_values": tensor("batch", 2, 16, 16, low=-1.0, high=1.0)}
    assert decl.dims == {"batch": (1, 2)}


def test_wav2vec2_waveform_long_enough_for_the_feature_extractor():
    model = _hf("Wav2Vec2Model", "Wav2Vec2Config", conv_dim=(8, 8), conv_stride=(3, 2), conv_kernel=(5, 4),
                num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, **TINY)
    decl = infer_inputs(model)
    assert list(decl.inputs) == ["input_values"] and isinstance(decl.inputs["input_values"], type(tensor(1)))
    # 4 frames: (4-1)*2+4 = 10 after the first conv, (10-1)*3+5 = 32 samples; 12 frames: 26 -> 80
    assert decl.dims == {"batch": (1, 2), "samples": (32, 80)}
    _check_runs_everywhere(model, decl)


def test_t5_encoder_decoder_gets_decoder_input_ids_and_no_cache():
    model = _hf("T5Model", "T5Config", vocab_size=33, d_model=16, d_kv=4, d_ff=20, num_layers=1, num_heads=2,
                decoder_start_token_id=0)
    model.config.use_cache = True
    decl = infer_inputs(model)
    assert list(decl.inputs) == ["input_ids", "attention_mask", "decoder_input_ids"]
    assert isinstance(decl.inputs["attention_mask"], MaskSpec)
    assert decl.inputs["decoder_input_ids"] == tensor("batch", "dec_seq", dtype=torch.int64, low=0, high=33)
    assert decl.dims == {"batch": (1, 2), "seq": (2, 16), "dec_seq": (2, 8)}
    assert decl.use_cache_off and model.config.use_cache is False  # probing prepared the model
    assert "use_cache" in decl.notes["model"]


def test_whisper_features_are_exactly_twice_max_source_positions():
    model = _hf("WhisperModel", "WhisperConfig", vocab_size=30, num_mel_bins=4, encoder_layers=1, decoder_layers=1,
                d_model=16, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=20,
                decoder_ffn_dim=20, max_source_positions=6, max_target_positions=10, pad_token_id=1,
                bos_token_id=0, eos_token_id=2, decoder_start_token_id=0, begin_suppress_tokens=None,
                suppress_tokens=None)
    decl = infer_inputs(model)
    assert decl.inputs["input_features"] == tensor("batch", 4, 12, low=-1.0, high=1.0)
    assert decl.dims["dec_seq"] == (2, 8)
