"""Fixed-size position and time embeddings, interpolated to each grid shape on the fly.

Three mmaction2 1.2.0 transformers store embeddings sized for the config's input and cannot take
another T or S (REFERENCE.md, section 7):

- ``TimeSformer``: ``pos_embed`` (class token + H/p x W/p patches) and ``time_embed`` (``num_frames``),
  and ``num_frames`` in the backbone and in every divided attention layer;
- ``VisionTransformer`` (VideoMAE, ``vit_mae.py``): ``pos_embed`` over T/tubelet x H/p x W/p patches;
  mmaction2 resizes its spatial grid, not its temporal one;
- ``UniFormerV2``: ``positional_embedding`` (class token + H/p x W/p patches) and the transformer's fixed
  ``T``.

:func:`adapt_embeddings` swaps the class of such modules in place (as grouped batch norm does) for a
subclass whose forward resizes the embeddings to the input's token grid, as mmaction2's MViT does
(``resize_pos_embed``: trilinear over T x H x W, class token kept), and sets the frame counts, for that
forward only. The parameters keep their base size, so the state dict, the optimizer and checkpoints are
those of the plain model, and at the base shape the forward is the plain model's. The gradient of the
resized embedding flows back to the stored one. :func:`embedding_problems` names the grid shapes an
adapted model cannot take (fewer than one token along an axis).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from mmaction.models.backbones.mvit import resize_pos_embed
from mmaction.models.backbones.timesformer import TimeSformer
from mmaction.models.backbones.uniformerv2 import UniFormerV2
from mmaction.models.backbones.vit_mae import VisionTransformer
from torch import nn

from mmmultigrid.plan import MultigridPlan, describe_use, shapes_in_use

#: (module, attribute) -> the value it takes for one forward.
Substitutions = dict[tuple[nn.Module, str], Any]
#: Tokens along (T, H, W) for an input clip.
TokenGrid = tuple[int, int, int]


@contextmanager
def substituted(values: Substitutions) -> Iterator[None]:
    """Within the block ``module.name`` reads the given value; stored parameters and buffers untouched.

    The value goes into the instance ``__dict__``, which attribute lookup reads before ``nn.Module``'s
    parameters and buffers; the previous state is restored on exit, also after an error.
    """
    saved = [(module, name, module.__dict__.get(name, _ABSENT)) for module, name in values]
    try:
        for (module, name), value in values.items():
            module.__dict__[name] = value
        yield
    finally:
        for module, name, old in saved:
            if old is _ABSENT:
                del module.__dict__[name]
            else:
                module.__dict__[name] = old


_ABSENT = object()


def conv_output(size: int, conv: nn.Module, dim: int) -> int:
    """Output length of ``conv`` along ``dim`` (0: T of a Conv3d, -1: W) for an input of ``size``."""
    kernel, stride, padding, dilation = (conv.kernel_size[dim], conv.stride[dim], conv.padding[dim],
                                         conv.dilation[dim])
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def resize_grid(embed: torch.Tensor, src: TokenGrid, dst: TokenGrid, extra_tokens: int) -> torch.Tensor:
    """``embed`` (1, extra + T*H*W, C) resized from the token grid ``src`` to ``dst`` (trilinear)."""
    return resize_pos_embed(embed, src, dst, mode='trilinear', num_extra_tokens=extra_tokens)


class MultigridTimeSformer(TimeSformer):
    """``TimeSformer`` whose ``pos_embed``, ``time_embed`` and frame counts follow the input clip."""

    def base_grid(self) -> TokenGrid:
        return (self.num_frames, *(s // p for s, p in zip(self.patch_embed.img_size,
                                                          self.patch_embed.patch_size)))

    def token_grid(self, shape: tuple[int, ...]) -> TokenGrid:
        _, _, t, h, w = shape
        return t, h // self.patch_embed.patch_size[0], w // self.patch_embed.patch_size[1]

    def substitutions(self, grid: TokenGrid) -> Substitutions:
        (t0, h0, w0), (t, h, w) = self.base_grid(), grid
        values: Substitutions = {}
        if (h, w) != (h0, w0):
            values[self, 'pos_embed'] = resize_grid(self.pos_embed, (1, h0, w0), (1, h, w), 1)
        if t != t0:
            if self.attention_type != 'space_only':
                values[self, 'time_embed'] = resize_grid(self.time_embed, (t0, 1, 1), (t, 1, 1), 0)
            for module in self.modules():  # the backbone and its divided attention layers
                if getattr(module, 'num_frames', None) == t0:
                    values[module, 'num_frames'] = t
        return values

    def embeddings(self) -> str:
        t0, h0, w0 = self.base_grid()
        time = '' if self.attention_type == 'space_only' else f' and time_embed ({t0} frames)'
        return f'pos_embed ({h0}x{w0} patches + class token){time}'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with substituted(self.substitutions(self.token_grid(x.shape))):
            return super().forward(x)


class MultigridVideoMAE(VisionTransformer):
    """VideoMAE's ``VisionTransformer`` whose ``pos_embed`` follows the input's number of tubelets.

    mmaction2 resizes the spatial grid itself (bicubic); this adds the temporal axis (linear), before.
    """

    def base_grid(self) -> TokenGrid:
        h0, w0 = self.grid_size
        return self.pos_embed.shape[1] // (h0 * w0), h0, w0

    def token_grid(self, shape: tuple[int, ...]) -> TokenGrid:
        conv = self.patch_embed.projection
        return tuple(conv_output(n, conv, d) for d, n in enumerate(shape[2:]))

    def substitutions(self, grid: TokenGrid) -> Substitutions:
        t0, h0, w0 = self.base_grid()
        if grid[0] == t0:
            return {}
        return {(self, 'pos_embed'): resize_grid(self.pos_embed, (t0, h0, w0), (grid[0], h0, w0), 0)}

    def embeddings(self) -> str:
        t0, h0, w0 = self.base_grid()
        return f'pos_embed ({t0}x{h0}x{w0} tubelets; the spatial grid was already resized by mmaction2)'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with substituted(self.substitutions(self.token_grid(x.shape))):
            return super().forward(x)


class MultigridUniFormerV2(UniFormerV2):
    """``UniFormerV2`` whose ``positional_embedding`` and transformer ``T`` follow the input clip."""

    def base_grid(self) -> TokenGrid:
        side = self.input_resolution // self.conv1.stride[-1]
        return self.transformer.T, side, side

    def token_grid(self, shape: tuple[int, ...]) -> TokenGrid:
        return tuple(conv_output(n, self.conv1, d) for d, n in enumerate(shape[2:]))

    def substitutions(self, grid: TokenGrid) -> Substitutions:
        (t0, h0, w0), (t, h, w) = self.base_grid(), grid
        values: Substitutions = {}
        if (h, w) != (h0, w0):
            values[self, 'positional_embedding'] = resize_grid(
                self.positional_embedding[None], (1, h0, w0), (1, h, w), 1)[0]
        if t != t0:
            values[self.transformer, 'T'] = t
        return values

    def embeddings(self) -> str:
        t0, h0, w0 = self.base_grid()
        return f'positional_embedding ({h0}x{w0} patches + class token) and transformer.T ({t0})'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with substituted(self.substitutions(self.token_grid(x.shape))):
            return super().forward(x)


#: mmaction2 class -> its adapted subclass.
ADAPTED = {TimeSformer: MultigridTimeSformer, VisionTransformer: MultigridVideoMAE,
           UniFormerV2: MultigridUniFormerV2}
AdaptedModule = MultigridTimeSformer | MultigridVideoMAE | MultigridUniFormerV2


def adapt_embeddings(model: nn.Module) -> list[str]:
    """Make every module of a class in :data:`ADAPTED` its adapted subclass, in place; returns one
    description per adapted module (those adapted before included)."""
    described = []
    for name, module in model.named_modules():
        if type(module) in ADAPTED:
            module.__class__ = ADAPTED[type(module)]
        if isinstance(module, tuple(ADAPTED.values())):
            t0, h0, w0 = module.base_grid()
            described.append(f'{name or "model"} ({type(module).__bases__[0].__name__}): '
                             f'{module.embeddings()} interpolated from the base token grid '
                             f'{t0}x{h0}x{w0} to each grid shape\'s; the stored parameters keep '
                             'their base size')
    return described


def embedding_problems(model: nn.Module, plan: MultigridPlan) -> list[str]:
    """One message per grid shape that gives an adapted module fewer than one token along an axis,
    naming the module, its embeddings and both token grids."""
    problems = []
    for name, module in model.named_modules():
        if not isinstance(module, tuple(ADAPTED.values())):
            continue
        for segment, shape in shapes_in_use(plan):
            grid = module.token_grid((1, 3, shape.clip_len, shape.crop_size, shape.crop_size))
            if min(grid) < 1:
                problems.append(
                    f'{describe_use(shape, [segment])}: {name or "model"} '
                    f'({type(module).__bases__[0].__name__}) would get {"x".join(map(str, grid))} '
                    f'tokens (T x H x W), so its {module.embeddings()} cannot be interpolated from the '
                    f'base grid {"x".join(map(str, module.base_grid()))}; raise '
                    'MultigridHook.long_cycle_factors / short_cycle_factors so every T and S gives at '
                    'least one token')
    return problems
