"""CoaT-Lite: four serial stages of conv-attention blocks, each with its own class token.

Paper: Co-Scale Conv-Attentional Image Transformers (Xu et al., arXiv 2104.06399, 2021).
Built from the attention room's ``PatchEmbed``, ``FactorizedAttention`` (with a
``ConvRelPosEnc`` shared per stage) and ``ConvPosEnc``, and the MLP room's ``MLP``.

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i,
N_i its tokens, K classes.

Key correspondence with PyTorch Image Models' ``CoaT`` state dict (timm name -> ours,
i = 1..4 and stage s = i - 1)::

    patch_embed{i}.*                          ->  stages.{s}.patch_embed.*
    cls_token{i}                              ->  stages.{s}.cls_token
    cpe{i}.proj.*                             ->  stages.{s}.cpe.proj.*
    crpe{i}.conv_list.{k}.*                   ->  stages.{s}.crpe.conv_list.{k}.*
    serial_blocks{i}.{j}.norm1.* / .norm2.*   ->  stages.{s}.blocks.{j}.norm1.* / .norm2.*
    serial_blocks{i}.{j}.factoratt_crpe.qkv.* ->  stages.{s}.blocks.{j}.attn.qkv.*  (and .proj)
    serial_blocks{i}.{j}.mlp.fc1.* / .fc2.*   ->  stages.{s}.blocks.{j}.mlp.layers.0.* / .layers.4.*
    norm4.*                                   ->  norm.*
    head.*                                    ->  head.*

timm's state dict also lists the stage's shared encodings under every block
(``serial_blocks{i}.{j}.cpe.*``, ``...factoratt_crpe.crpe.*``): the same tensors, held
once here (the stage owns them and passes them to its blocks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_norm
from blockzoo.attention.coat import CRPE_WINDOW, ConvPosEnc, ConvRelPosEnc, FactorizedAttention
from blockzoo.attention.patch_embed import PatchEmbed
from blockzoo.checks import check_shape, require
from blockzoo.mlp.mlp import MLP
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["CoaTBlock", "CoaTLite", "CoaTStage", "coat_lite_tiny"]


class CoaTBlock(nn.Module):
    r"""CoaT's serial block: position encoding, conv-attention and an MLP, pre-norm and residual.

    Xu et al., arXiv 2104.06399, Sec. 5.1 and Fig. 4::

        x = CPE(x)                                   (the stage's shared ConvPosEnc)
        x = x + FactorAtt(LN(x))                     (the stage's shared ConvRelPosEnc)
        x = x + MLP(LN(x))                           MLP: Linear(C, rC) - GELU - Linear(rC, C)

    Args:
        dim: C. num_heads: h. mlp_ratio: r. norm_layer / norm_eps: the block's norms
            (the released code: LayerNorm, eps 1e-6).

    Shape:
        - ``forward(x, size, cpe, crpe)``: (B, 1 + H W, C) tokens (class token first) of
          an (H, W) map -> same.
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0,
                 norm_layer: LayerSpec = "layernorm", norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.dim = dim
        self.norm1 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.attn = FactorizedAttention(dim, num_heads, crpe_window=None, **fk)
        self.norm2 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim, act_layer="gelu", **fk)

    def forward(self, x: torch.Tensor, size: tuple[int, int], cpe: ConvPosEnc,
                crpe: ConvRelPosEnc) -> torch.Tensor:
        x = cpe.forward_tokens(x, size, prefix=1)
        x = x + self.attn.attend_tokens(self.norm1(x), size, crpe, prefix=1)
        return x + self.mlp(self.norm2(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class CoaTStage(nn.Module):
    r"""A CoaT-Lite stage: patch embedding, a class token, serial blocks sharing one CPE and one CRPE.

    Xu et al., arXiv 2104.06399, Sec. 5.1 and Fig. 5 (CoaT-Lite: serial blocks only)::

        z = [cls; LN(E x_p)]                 p x p patches of the input map
        z = Block_n(... Block_1(z))

    Args:
        in_dim: C_in. dim: D. patch_size: p. depth: n. num_heads: h. mlp_ratio: r.
        crpe_window: as ``FactorizedAttention``. norm_layer, norm_eps: as ``CoaTBlock``.

    Shape:
        - Input: (B, C_in, H, W), any H, W (padded to multiples of p).
        - Output: (B, D, H', W'), H' = ceil(H / p), the class token dropped;
          ``forward_tokens`` returns (B, 1 + H' W', D) with the class token first.
    """

    def __init__(self, in_dim: int, dim: int, patch_size: int, depth: int, num_heads: int, *,
                 mlp_ratio: float = 4.0, crpe_window: int | Mapping[int, int] = CRPE_WINDOW,
                 norm_layer: LayerSpec = "layernorm", norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        require(dim % num_heads == 0, f"CoaTStage: num_heads={num_heads} must divide dim={dim}")
        self.in_dim, self.dim = in_dim, dim
        self.patch_embed = PatchEmbed(in_dim, dim, patch_size, pad=True, norm_layer=norm_layer, **fk)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **fk))
        self.cpe = ConvPosEnc(dim, 3, **fk)
        self.crpe = ConvRelPosEnc(dim // num_heads, num_heads, crpe_window, **fk)
        self.blocks = nn.ModuleList([
            CoaTBlock(dim, num_heads, mlp_ratio=mlp_ratio, norm_layer=norm_layer, norm_eps=norm_eps, **fk)
            for _ in range(depth)
        ])
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C_in, H, W) -> ((B, 1 + H' W', D) tokens, (H', W'))."""
        size = self.patch_embed.grid(x.shape[2], x.shape[3])
        z = self.patch_embed(x)  # (B, H' W', D)
        z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1), z], 1)  # (B, 1 + H' W', D)
        for block in self.blocks:
            z = block(z, size, self.cpe, self.crpe)
        return z, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, (h, w) = self.forward_tokens(x)
        return z[:, 1:].transpose(1, 2).reshape(z.shape[0], self.dim, h, w)  # (B, D, H', W')

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, dim={self.dim}"


class CoaTLite(nn.Module):
    r"""CoaT-Lite: four CoaT stages (strides 4, 8, 16, 32); the last class token, normalised, is classified.

    Xu et al., "Co-Scale Conv-Attentional Image Transformers", arXiv 2104.06399, Sec. 5
    and Table 1 (CoaT-Lite: serial blocks, no parallel blocks).

    Equation::

        x_i = Stage_i(x_{i-1})              x_0 the image; stages 1-3 hand on their maps
        z_4 = Stage_4's tokens              (B, 1 + N_4, D_4)
        logits = W LN(z_4)[:, 0] + b

    Args:
        in_chans: C. num_classes: K.
        dims: D_i (Lite Tiny: 64, 128, 256, 320). depths: blocks per stage (2, 2, 2, 2).
        num_heads: h, every stage (8). mlp_ratios: per stage (8, 8, 4, 4).
        patch_size: p of the first embedding (4; later ones are 2).
        crpe_window: heads per depthwise kernel size ({3: 2, 5: 3, 7: 3}).
        norm_layer: (LayerNorm, eps 1e-6 in the blocks and the final norm, as released).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (each embedding pads its input to a
          multiple of its patch).
        - Output: (B, K) logits.

    Deviations:
        Stages 1-3 return image maps and stage 4 its tokens (the class token is the
        head's input), so ``attach`` follows stages 1-3. No dropout or stochastic depth.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        dims: Sequence[int] = (64, 128, 256, 320),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: int = 8,
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        patch_size: int = 4,
        crpe_window: int | Mapping[int, int] = CRPE_WINDOW,
        norm_layer: LayerSpec = "layernorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dims, depths, mlp_ratios = tuple(dims), tuple(depths), tuple(mlp_ratios)
        require(len(dims) == len(depths) == len(mlp_ratios) >= 1,
                f"CoaTLite: dims={dims}, depths={depths}, mlp_ratios={mlp_ratios} must be equally long")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        ins = (in_chans, *dims[:-1])
        self.stages = nn.Sequential(*[
            CoaTStage(ins[i], dims[i], patch_size if i == 0 else 2, depths[i], num_heads,
                      mlp_ratio=mlp_ratios[i], crpe_window=crpe_window, norm_layer=norm_layer, **fk)
            for i in range(len(dims))
        ])
        self.num_features = dims[-1]
        self.norm = create_norm(norm_layer, dims[-1], eps=1e-6, **fk)
        self.head = nn.Linear(dims[-1], num_classes, **fk)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's tokens (B, 1 + N_4, D_4), normalised, class token first."""
        check_shape(x, "B C H W", name="CoaTLite", C=self.in_chans)
        for stage in self.stages[:-1]:
            x = stage(x)  # (B, D_i, H_i, W_i)
        z, _ = self.stages[-1].forward_tokens(x)
        return self.norm(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])  # W LN(z_4)[:, 0] + b: (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="coat_lite_tiny",
    family="model",
    paper="Co-Scale Conv-Attentional Image Transformers",
    arxiv="2104.06399",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="5.7M", macs="1.6G", source="Table 2"),
    example=Example(
        # A small config keeps the generic tests fast; the constructor's defaults are the
        # paper's model (docs/catalogue.md measures it beside the paper's table).
        config=dict(in_chans=3, num_classes=10, dims=(4, 8), depths=(1, 2), num_heads=2, mlp_ratios=(2, 2),
                    crpe_window=3),
        inputs=images("in_chans"), size=(64, 64),
        sizes=((36, 52), (70, 40)), out_shape=logits_shape,
        tiny=dict(num_classes=3, dims=(4, 8), depths=(1, 1), num_heads=2, mlp_ratios=(2, 2), crpe_window=3),
    ),
)
def coat_lite_tiny(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> CoaTLite:
    """CoaT-Lite Tiny: widths (64, 128, 256, 320), 2 blocks per stage, 8 heads, MLP ratios (8, 8, 4, 4).

    Xu et al., arXiv 2104.06399, Table 1 and Table 2 (CoaT-Lite Tiny: 5.7M parameters,
    1.6 GFLOPs at 224x224). Parameter count equal to PyTorch Image Models'
    ``coat_lite_tiny`` (5,721,960).

    Equation: see ``CoaTLite``, ``CoaTBlock`` and ``FactorizedAttention``.

    Args:
        in_chans: C. num_classes: K. **kw: ``CoaTLite``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return CoaTLite(in_chans, num_classes, **kw)
