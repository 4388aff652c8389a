"""What a masked autoencoder predicts per token: pixels (MAE, SimMIM, VideoMAE), HOG features (MaskFeat) or
discrete visual tokens (BEiT-style)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mimx.codebook import nearest_code
from mimx.config import UserError
from mimx.devices import DeviceConstant
from mimx.patches import denormalize_patches, normalized_patchify, patchify


class PixelTarget:
    """Patchified pixels, optionally normalised per token (MAE's norm-pix target).

    ``per_channel``: normalise each channel of a token on its own (VideoMAE);
    ``eps_outside``: divide by ``std + eps`` rather than ``sqrt(var + eps)``;
    ``mean``/``std``: undo the input normalisation first, so targets are pixels
    in [0, 1] (VideoMAE computes its targets that way).
    """

    def __init__(self, patch: tuple[int, ...], norm_pix: bool = True, per_channel: int | None = None,
                 eps: float = 1e-6, eps_outside: bool = False, mean: list[float] | None = None,
                 std: list[float] | None = None) -> None:
        self.patch = tuple(patch)
        self.norm_pix = norm_pix
        self.per_channel = per_channel
        self.eps = eps
        self.eps_outside = eps_outside
        self.mean = None if mean is None else DeviceConstant(mean, torch.float32)
        self.std = None if std is None else DeviceConstant(std, torch.float32)

    def width(self, channels: int) -> int:
        """Values per token for ``channels`` input channels."""
        return math.prod(self.patch) * channels

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The input with its normalisation undone (when mean/std are set)."""
        x = x.float()
        if self.mean is None or self.std is None:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.std.on(x.device).view(shape) + self.mean.on(x.device).view(shape)

    def __call__(self, x: torch.Tensor, layout: Any) -> torch.Tensor:
        if not self.norm_pix:
            return patchify(self.pixels(x), self.patch)
        return normalized_patchify(self.pixels(x), self.patch, self.per_channel is not None, self.eps,
                                   self.eps_outside)

    def denormalize(self, pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Predicted patches back in the pixel space of :meth:`pixels`, using ``x``'s patch statistics."""
        reference = patchify(self.pixels(x), self.patch)
        if not self.norm_pix:
            return pred.float()
        return denormalize_patches(pred.float(), reference, self.per_channel, self.eps, self.eps_outside)

    def __repr__(self) -> str:
        return f"PixelTarget(patch={self.patch}, norm_pix={self.norm_pix})"


def gaussian_window(size: int, std: float) -> torch.Tensor:
    """``[size, size]`` Gaussian weights summing to one, centred on the window."""
    n = torch.arange(size, dtype=torch.float32)
    w = torch.exp(-0.5 * ((n - n.mean()) / std) ** 2)
    window = w[:, None] * w[None, :]
    return window / window.sum()


_WINDOWS: dict[int, DeviceConstant] = {}


def _hog_window(size: int, device: torch.device) -> torch.Tensor:
    """MaskFeat's Gaussian vote weights (std ``size / 2``), built once per size and device."""
    if torch.compiler.is_compiling():
        return gaussian_window(size, size / 2).to(device)
    if size not in _WINDOWS:
        _WINDOWS[size] = DeviceConstant(gaussian_window(size, size / 2))
    return _WINDOWS[size].on(device)


@torch.no_grad()
def hog_cells(x: torch.Tensor, cell: int = 8, bins: int = 9, window: int | None = None) -> torch.Tensor:
    """Histograms of oriented gradients per channel and cell: ``[B, C, H, W] -> [B, C, bins, H/cell, W/cell]``.

    As MaskFeat: Sobel gradients on the reflect-padded input, unsigned
    orientation in ``bins`` equal bins over 180 degrees, votes weighted by the
    gradient magnitude (times a Gaussian of side ``window`` and std
    ``window / 2`` tiled over the image, when given), summed per cell and
    L2-normalised per channel and cell.
    """
    b, c, h, w = x.shape
    if h % cell or w % cell:
        raise ValueError(f"image {h}x{w} is not divisible by the HOG cell {cell}")
    planes = F.pad(x.float().reshape(b * c, h, w), (1, 1, 1, 1), mode="reflect")
    # MaskFeat's Sobel kernels [[1, 0, -1], [2, 0, -2], [1, 0, -1]] (and transposed), applied as
    # cross-correlation, in separable form: a difference across the axis, then [1, 2, 1] along the other
    # (a one-channel 3x3 convolution is slow on CPUs)
    across = planes[:, :, :-2] - planes[:, :, 2:]
    gx = across[:, :-2] + 2 * across[:, 1:-1] + across[:, 2:]
    down = planes[:, :-2] - planes[:, 2:]
    gy = down[:, :, :-2] + 2 * down[:, :, 1:-1] + down[:, :, 2:]
    magnitude = torch.hypot(gx, gy)
    if window:
        if h % window or w % window:
            raise ValueError(f"image {h}x{w} is not divisible by the HOG window {window}")
        magnitude = magnitude * _hog_window(window, x.device).repeat(h // window, w // window)
    # orientation as MaskFeat measures it (atan2(gx, gy)), folded onto [0, 180) degrees
    index = torch.floor(torch.atan2(gx, gy) / math.pi * bins).remainder_(bins).long()
    hc, wc = h // cell, w // cell
    cell_of = (torch.arange(h, device=x.device) // cell)[:, None] * wc + torch.arange(w, device=x.device) // cell
    slot = torch.add(cell_of, index, alpha=hc * wc)  # one histogram slot per (bin, cell)
    hist = magnitude.new_zeros(b * c, bins * hc * wc).scatter_add_(1, slot.flatten(1), magnitude.flatten(1))
    return F.normalize(hist.view(b, c, bins, hc, wc), dim=2)


class HOGTarget:
    """MaskFeat's target: the HOG of each patch, ``C * bins * (patch / cell)^2`` values per token.

    Per-channel affine input normalisation does not change it (gradients
    scale, histograms are L2-normalised), so it reads the model's input as is.
    Values of a token are ordered ``(channel, bin, cell row, cell column)``.
    With ``(t, p, p)`` tubelets (video MaskFeat) each frame's HOG is taken
    on its own and a token holds its ``t`` frames' values one after another.
    """

    def __init__(self, patch: tuple[int, ...], cell: int = 8, bins: int = 9, gaussian: bool = True) -> None:
        self.patch = tuple(int(p) for p in patch)
        self.frames = self.patch[0] if len(self.patch) == 3 else 1
        self.spatial = self.patch[-2:]
        if len(self.patch) not in (2, 3) or any(p % cell for p in self.spatial):
            raise ValueError(f"HOG targets need 2-D patches or 3-D tubelets whose sides divide by the cell {cell}, "
                             f"got {self.patch}")
        self.cell = cell
        self.bins = bins
        self.window = self.spatial[0] if gaussian and self.spatial[0] == self.spatial[1] else None
        if gaussian and self.window is None:
            raise ValueError("the HOG Gaussian window needs square patches")

    def width(self, channels: int) -> int:
        """Values per token for ``channels`` input channels."""
        return self.frames * channels * self.bins * (self.spatial[0] // self.cell) * (self.spatial[1] // self.cell)

    def __call__(self, x: torch.Tensor, layout: Any) -> torch.Tensor:
        if self.frames > 1 or x.dim() == 5:  # [B, C, T, H, W]: frame by frame, then t frames per token
            b, c, t = x.shape[:3]
            tokens = self._tokens(x.transpose(1, 2).reshape(b * t, c, *x.shape[3:]))
            tokens = tokens.view(b, t // self.frames, self.frames, *tokens.shape[1:]).transpose(2, 3)
            return tokens.reshape(b, -1, self.frames * tokens.shape[-1])
        return self._tokens(x)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        hist = hog_cells(x, self.cell, self.bins, self.window)
        b, c, bins, hc, wc = hist.shape
        kh, kw = self.spatial[0] // self.cell, self.spatial[1] // self.cell
        hist = hist.view(b, c, bins, hc // kh, kh, wc // kw, kw).permute(0, 3, 5, 1, 2, 4, 6)
        return hist.reshape(b, (hc // kh) * (wc // kw), c * bins * kh * kw)

    def render(self, tokens: torch.Tensor, grid: tuple[int, ...], channels: int,
               reference: torch.Tensor | None = None, zoom: int = 1) -> torch.Tensor:
        """HOG tokens ``[B, L, P]`` as glyph images ``[B, 1, zoom * H, zoom * W]`` (``[B, 1, T, zoom * H,
        zoom * W]`` for tubelets) in [0, 1]: per cell, one line per bin along the edge direction it votes for,
        as bright as the bin's value (mean over channels).

        Brightness is relative to the brightest pixel of ``reference``'s glyphs (default: ``tokens``'
        own), so a prediction drawn against its target shares the target's scale.
        """
        image = self._frame_glyphs(tokens, grid, channels, zoom)
        ref = image if reference is None else self._frame_glyphs(reference, grid, channels, zoom)
        scale = ref.flatten(1).amax(1).clamp_min(1e-6).view(-1, *([1] * (image.dim() - 1)))
        return (image / scale).clamp(0, 1)

    def _frame_glyphs(self, tokens: torch.Tensor, grid: tuple[int, ...], channels: int, zoom: int) -> torch.Tensor:
        if len(grid) == 2:
            return self._glyphs(tokens, grid, channels, zoom)
        b, (steps, h, w) = tokens.shape[0], grid
        frames = tokens.view(b, steps, h * w, self.frames, -1).transpose(2, 3).reshape(b * steps * self.frames,
                                                                                       h * w, -1)
        image = self._glyphs(frames, (h, w), channels, zoom)
        return image.view(b, steps * self.frames, *image.shape[2:]).unsqueeze(1)

    def _glyphs(self, tokens: torch.Tensor, grid: tuple[int, int], channels: int, zoom: int) -> torch.Tensor:
        kh, kw = self.spatial[0] // self.cell, self.spatial[1] // self.cell
        b = tokens.shape[0]
        hist = tokens.float().clamp_min(0).view(b, grid[0], grid[1], channels, self.bins, kh, kw).mean(3)
        image = torch.einsum("bhwnij,nuv->bhiuwjv", hist, self._stamps(self.cell * zoom, tokens.device))
        return image.reshape(b, 1, grid[0] * self.spatial[0] * zoom, grid[1] * self.spatial[1] * zoom)

    def _stamps(self, s: int, device: torch.device) -> torch.Tensor:
        """``[bins, s, s]``: an anti-aliased line through the cell centre per bin, across its gradients."""
        centre = torch.arange(s, dtype=torch.float32, device=device) - (s - 1) / 2
        v, u = torch.meshgrid(centre, centre, indexing="ij")  # v rows (down), u columns (right)
        theta = (torch.arange(self.bins, dtype=torch.float32, device=device) + 0.5) * math.pi / self.bins
        # a bin's gradients point along (sin, cos) in (column, row); its edges run across them
        du, dv = theta.cos().view(-1, 1, 1), -theta.sin().view(-1, 1, 1)
        across = (u * dv - v * du).abs()
        along = (u * du + v * dv).abs()
        return (1 - across).clamp_min(0) * (along <= s / 2)

    def __repr__(self) -> str:
        return f"HOGTarget(patch={self.patch}, cell={self.cell}, bins={self.bins}, window={self.window})"


class TokenTarget(nn.Module):
    """BEiT-style target: for each patch, the id of its nearest code in a fitted codebook (``[B, L]`` ids).

    The codebook (``[vocab, prod(patch) * channels]``, patch vectors of the
    model's input, see :mod:`mimx.codebook`) is a buffer, so checkpoints carry
    it; it stays fp32 when the model is cast to bf16. A target built without
    codes refuses to score until :meth:`load_codes` or a checkpoint fills it.
    """

    # never trained: distributed training need not re-send it every step; once ``loaded`` (from the config's
    # codebook), a run started from other weights (``train.init``) keeps it
    constant_buffers = ("codebook",)

    def __init__(self, patch: tuple[int, ...], vocab_size: int, channels: int) -> None:
        super().__init__()
        self.patch = tuple(int(p) for p in patch)
        self.channels = channels
        self.register_buffer("codebook", torch.zeros(vocab_size, math.prod(self.patch) * channels))
        self.loaded = False

    @property
    def vocab_size(self) -> int:
        return self.codebook.shape[0]

    def width(self, channels: int) -> int:
        """Logits per token: one per code."""
        return self.vocab_size

    def load_codes(self, codes: torch.Tensor) -> None:
        if tuple(codes.shape) != tuple(self.codebook.shape):
            raise ValueError(f"codes of shape {tuple(codes.shape)} do not fit a codebook of "
                             f"{tuple(self.codebook.shape)} (vocabulary x patch values)")
        with torch.no_grad():
            self.codebook.copy_(codes)
        self.loaded = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "codebook" in state_dict:
            self.loaded = True

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202
        codes = self.codebook
        super()._apply(fn, recurse)
        if self.codebook.dtype != torch.float32:  # a cast to bf16 would move codes and flip ids: keep fp32
            self.codebook = codes.to(self.codebook.device)
        return self

    def forward(self, x: torch.Tensor, layout: Any = None) -> torch.Tensor:
        if not self.loaded:
            raise RuntimeError("this token target has no codebook: load one (model.codebook=PATH) or a checkpoint")
        return nearest_code(patchify(x.float(), self.patch), self.codebook)[0]

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """The codes of ``ids [B, L]`` as patch vectors ``[B, L, prod(patch) * channels]``."""
        return self.codebook[ids]

    def extra_repr(self) -> str:
        return f"patch={self.patch}, vocab_size={self.vocab_size}, channels={self.channels}"


def hog_target(patch: tuple[int, ...], cell: int, bins: int) -> HOGTarget:
    """The HOG target of a config's ``model.hog_cell`` / ``model.hog_bins`` on ``patch`` (2-D patches or
    ``(t, p, p)`` tubelets), refused with the fix when the cell does not divide the patch side."""
    side = patch[-1]
    if side % cell:
        raise UserError(f"model.hog_cell={cell} must divide model.patch_size={side} "
                        f"(e.g. model.hog_cell={side // 2 if side % 2 == 0 else side})")
    return HOGTarget(patch, cell=cell, bins=bins)
