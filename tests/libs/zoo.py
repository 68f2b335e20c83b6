"""A corpus of tiny models from five model libraries beyond ``transformers``, built offline with random weights.

* ``diffusers``: generative image models (UNets, a VAE, diffusion transformers); outputs are the library's
  ``BaseOutput`` dataclasses (registered as pytrees without key functions);
* ``monai``: medical segmentation networks (2-D, 32x32 single-channel images) and a loss;
* ``x_transformers``: an einops/einx-based transformer library (decoders with rotary, ALiBi and T5 relative
  position biases, an encoder with a padding mask, a ViT, a continuous-input transformer, an autoregressive loss);
* ``kornia``: differentiable vision ops as ``nn.Module`` (filters, a perspective warp solved from point
  offsets, colour conversions, a loss);
* ``torch_geometric``: graph networks on a small graph given as node features and an ``edge_index``.

Each :class:`Model` names its library, a zero-argument ``build`` (the library is imported inside it), and
forward's inputs, by keyword (a dict) or positionally (a list), as spec tuples:

* ``("float", shape, low, high)``: float32 values in ``[low, high]``;
* ``("int", shape, low, high)``: int64 values in ``[low, high)``; ``high`` may name a dim (node indices);
* ``("mask", shape)``: a boolean padding mask (``mask(..., dtype=torch.bool)``: right-padded rows).

Shapes mix ints and dim names; ``dims`` bounds every named dim (inclusive ``(min, max)``). Nothing is
downloaded: every model is built from a tiny config with the library's own (seeded) init.
``tests/libs/test_corpus.py`` declares each entry as a ``@deployable`` test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LIBRARIES = ("diffusers", "monai", "x_transformers", "kornia", "torch_geometric")

BATCH = {"batch": (1, 2)}


@dataclass
class Model:
    name: str
    library: str  # one of LIBRARIES: the module pytest.importorskip imports
    build: Callable[[], Any]
    inputs: dict[str, tuple] | list[tuple]
    dims: dict[str, tuple[int, int]]
    notes: str = ""


# ------------------------------------------------------------------------------ diffusers


def _unet2d():
    import diffusers

    return diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8).eval()


def _unet2d_condition():
    import diffusers

    return diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24, attention_head_dim=8, norm_num_groups=8).eval()


def _autoencoder_kl():
    import diffusers

    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=16).eval()


def _dit():
    import diffusers

    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2, sample_size=8, patch_size=2,
        num_embeds_ada_norm=10).eval()


def _transformer2d():
    import diffusers

    return diffusers.Transformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=16, num_layers=1, norm_num_groups=8,
        cross_attention_dim=24).eval()


def _unet1d():
    import diffusers

    return diffusers.UNet1DModel(
        block_out_channels=(8, 8, 16, 16), in_channels=4, out_channels=4, time_embedding_type="positional",
        use_timestep_embedding=True, flip_sin_to_cos=False, freq_shift=1.0, out_block_type="OutConv1DBlock",
        mid_block_type="MidResTemporalBlock1D", down_block_types=("DownResnetBlock1D",) * 4,
        up_block_types=("UpResnetBlock1D",) * 3, act_fn="swish").eval()


_TIMESTEP = ("float", ("batch",), 0.0, 999.0)

DIFFUSERS = [
    Model("unet2d", "diffusers", _unet2d, {"sample": ("float", ("batch", 3, 16, 16), -1.0, 1.0),
                                          "timestep": _TIMESTEP}, dict(BATCH)),
    Model("unet2d_condition", "diffusers", _unet2d_condition,
          {"sample": ("float", ("batch", 4, 16, 16), -1.0, 1.0), "timestep": _TIMESTEP,
           "encoder_hidden_states": ("float", ("batch", "tokens", 24), -1.0, 1.0)},
          {"batch": (1, 2), "tokens": (2, 8)}),
    Model("autoencoder_kl", "diffusers", _autoencoder_kl, {"sample": ("float", ("batch", 3, 16, 16), -1.0, 1.0)},
          dict(BATCH), notes="encode, the posterior's mode, decode"),
    Model("dit", "diffusers", _dit, {"hidden_states": ("float", ("batch", 4, 8, 8), -1.0, 1.0),
                                     "timestep": ("int", ("batch",), 0, 1000),
                                     "class_labels": ("int", ("batch",), 0, 10)}, dict(BATCH)),
    Model("transformer2d", "diffusers", _transformer2d,
          {"hidden_states": ("float", ("batch", 16, 8, 8), -1.0, 1.0),
           "encoder_hidden_states": ("float", ("batch", "tokens", 24), -1.0, 1.0)},
          {"batch": (1, 2), "tokens": (2, 8)}, notes="continuous input, cross-attention"),
    Model("unet1d", "diffusers", _unet1d, {"sample": ("float", ("batch", 4, 16), -1.0, 1.0),
                                          "timestep": _TIMESTEP}, dict(BATCH)),
]

# ------------------------------------------------------------------------------ monai

_IMAGE = ("float", ("batch", 1, 32, 32), -1.0, 1.0)


def _monai_unet():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2),
                num_res_units=1).eval()


def _basic_unet():
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(8, 8, 16, 16, 32, 8)).eval()


def _segresnet():
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=2, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 2),
                     blocks_up=(1,)).eval()


def _swin_unetr():
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=1, out_channels=2, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), feature_size=12,
                     window_size=4, spatial_dims=2).eval()


def _unetr():
    from monai.networks.nets import UNETR

    return UNETR(in_channels=1, out_channels=2, img_size=(32, 32), spatial_dims=2, feature_size=8, hidden_size=32,
                 mlp_dim=64, num_heads=4).eval()


def _dynunet():
    from monai.networks.nets import DynUNet

    return DynUNet(spatial_dims=2, in_channels=1, out_channels=2, kernel_size=(3, 3, 3), strides=(1, 2, 2),
                   upsample_kernel_size=(2, 2), filters=(8, 16, 32)).eval()


def _dice_loss():
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=True).eval()


MONAI = [
    Model("monai_unet", "monai", _monai_unet, [_IMAGE], dict(BATCH), notes="residual units"),
    Model("basic_unet", "monai", _basic_unet, [_IMAGE], dict(BATCH)),
    Model("segresnet", "monai", _segresnet, [_IMAGE], dict(BATCH)),
    Model("swin_unetr", "monai", _swin_unetr, [("float", ("batch", 1, 64, 64), -1.0, 1.0)], dict(BATCH),
          notes="64x64 (the bottleneck's instance norm needs more than one position), window 4, one block a stage"),
    Model("unetr", "monai", _unetr, [_IMAGE], dict(BATCH)),
    Model("dynunet", "monai", _dynunet, [_IMAGE], dict(BATCH)),
    Model("dice_loss", "monai", _dice_loss,
          [("float", ("batch", 2, 16, 16), -3.0, 3.0), ("float", ("batch", 2, 16, 16), 0.0, 1.0)], dict(BATCH),
          notes="a 0-d loss"),
]

# ------------------------------------------------------------------------------ x_transformers

_TOKENS = 99
_IDS = ("int", ("batch", "seq"), 0, _TOKENS)
_TEXT = {"batch": (1, 2), "seq": (2, 16)}


def _wrapper(layers: str, **attn):
    def build():
        import x_transformers

        return x_transformers.TransformerWrapper(
            num_tokens=_TOKENS, max_seq_len=32,
            attn_layers=getattr(x_transformers, layers)(dim=32, depth=2, heads=4, **attn)).eval()

    return build


def _vit():
    import x_transformers

    return x_transformers.ViTransformerWrapper(
        image_size=32, patch_size=8, num_classes=5, attn_layers=x_transformers.Encoder(dim=32, depth=2, heads=4)).eval()


def _continuous():
    import x_transformers

    return x_transformers.ContinuousTransformerWrapper(
        dim_in=6, dim_out=6, max_seq_len=32, attn_layers=x_transformers.Encoder(dim=32, depth=2, heads=4)).eval()


def _autoregressive():
    import x_transformers

    return x_transformers.AutoregressiveWrapper(_wrapper("Decoder")()).eval()


X_TRANSFORMERS = [
    Model("xt_decoder", "x_transformers", _wrapper("Decoder"), {"x": _IDS}, dict(_TEXT)),
    Model("xt_encoder_mask", "x_transformers", _wrapper("Encoder"),
          {"x": _IDS, "mask": ("mask", ("batch", "seq"))}, dict(_TEXT), notes="a boolean padding mask"),
    Model("xt_rotary", "x_transformers", _wrapper("Decoder", rotary_pos_emb=True), {"x": _IDS}, dict(_TEXT)),
    Model("xt_alibi", "x_transformers", _wrapper("Decoder", alibi_pos_bias=True), {"x": _IDS}, dict(_TEXT),
          notes="forward caches the ALiBi bias in a buffer"),
    Model("xt_rel_pos", "x_transformers", _wrapper("Decoder", rel_pos_bias=True), {"x": _IDS}, dict(_TEXT),
          notes="T5 relative position buckets"),
    Model("xt_vit", "x_transformers", _vit, {"img": ("float", ("batch", 3, 32, 32), -1.0, 1.0)}, dict(BATCH)),
    Model("xt_continuous", "x_transformers", _continuous, {"x": ("float", ("batch", "seq", 6), -1.0, 1.0)},
          dict(_TEXT)),
    Model("xt_autoregressive_loss", "x_transformers", _autoregressive, {"x": _IDS},
          {"batch": (1, 2), "seq": (3, 16)}, notes="a 0-d next-token loss"),
]

# ------------------------------------------------------------------------------ kornia

_RGB = ("float", ("batch", 3, 24, 24), 0.0, 1.0)


def _kornia(path: str, *args, **kwargs):
    def build():
        import importlib

        module_name, cls = path.rsplit(".", 1)
        return getattr(importlib.import_module(module_name), cls)(*args, **kwargs).eval()

    return build


def _perspective():
    import kornia
    import torch

    class PerspectiveWarp(torch.nn.Module):
        """Warps each image by the homography that moves its corners by ``offsets`` (fractions of the size)."""

        def forward(self, image: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
            height, width = image.shape[-2:]
            corners = torch.tensor([[0.0, 0.0], [width - 1.0, 0.0], [width - 1.0, height - 1.0], [0.0, height - 1.0]])
            src = corners.expand(image.shape[0], 4, 2)
            dst = src + offsets * torch.tensor([width, height], dtype=image.dtype)
            matrix = kornia.geometry.transform.get_perspective_transform(src, dst)
            return kornia.geometry.transform.warp_perspective(image, matrix, (height, width))

    return PerspectiveWarp().eval()


KORNIA = [
    Model("gaussian_blur", "kornia", _kornia("kornia.filters.GaussianBlur2d", (5, 5), (1.5, 1.5)), [_RGB],
          dict(BATCH)),
    Model("sobel", "kornia", _kornia("kornia.filters.Sobel"), [_RGB], dict(BATCH)),
    Model("median_blur", "kornia", _kornia("kornia.filters.MedianBlur", (3, 3)), [_RGB], dict(BATCH)),
    Model("perspective_warp", "kornia", _perspective, [_RGB, ("float", ("batch", 4, 2), -0.1, 0.1)], dict(BATCH),
          notes="get_perspective_transform (a linear solve) and warp_perspective"),
    Model("rgb_to_hsv", "kornia", _kornia("kornia.color.RgbToHsv"), [_RGB], dict(BATCH)),
    Model("rgb_to_lab", "kornia", _kornia("kornia.color.RgbToLab"), [_RGB], dict(BATCH)),
    Model("ssim_loss", "kornia", _kornia("kornia.losses.SSIMLoss", 5), [_RGB, _RGB], dict(BATCH),
          notes="a 0-d loss"),
]

# ------------------------------------------------------------------------------ torch_geometric

_GRAPH = [("float", ("nodes", 8), -1.0, 1.0), ("int", (2, "edges"), 0, "nodes")]
_GRAPH_DIMS = {"nodes": (3, 12), "edges": (2, 24)}


def _pyg(cls: str, **kwargs):
    def build():
        import torch_geometric.nn.models as models

        return getattr(models, cls)(in_channels=8, hidden_channels=16, num_layers=2, out_channels=4, **kwargs).eval()

    return build


def _graph_classifier():
    import torch
    import torch_geometric.nn as gnn

    class GraphClassifier(torch.nn.Module):
        """Two TransformerConv layers, a sum over the nodes (one graph), a linear head."""

        def __init__(self):
            super().__init__()
            self.conv1 = gnn.TransformerConv(8, 8, heads=2)
            self.conv2 = gnn.TransformerConv(16, 16, heads=1)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
            x = self.conv1(x, edge_index).relu()
            x = self.conv2(x, edge_index).relu()
            return self.head(gnn.global_add_pool(x, None))

    return GraphClassifier().eval()


TORCH_GEOMETRIC = [
    Model("gcn", "torch_geometric", _pyg("GCN"), list(_GRAPH), dict(_GRAPH_DIMS)),
    Model("gat", "torch_geometric", _pyg("GAT", heads=2), list(_GRAPH), dict(_GRAPH_DIMS)),
    Model("graphsage", "torch_geometric", _pyg("GraphSAGE"), list(_GRAPH), dict(_GRAPH_DIMS)),
    Model("gin", "torch_geometric", _pyg("GIN"), list(_GRAPH), dict(_GRAPH_DIMS)),
    Model("edge_cnn", "torch_geometric", _pyg("EdgeCNN"), list(_GRAPH), dict(_GRAPH_DIMS)),
    Model("graph_transformer", "torch_geometric", _graph_classifier, list(_GRAPH), dict(_GRAPH_DIMS),
          notes="TransformerConv, global_add_pool"),
]

MODELS: list[Model] = [*DIFFUSERS, *MONAI, *X_TRANSFORMERS, *KORNIA, *TORCH_GEOMETRIC]
