"""Token masking: which tokens the encoder sees and which the model must reconstruct.

Every generator returns a :class:`Mask` with the same number of hidden tokens in
each sample, so gathering the visible tokens is one batched ``torch.gather``.
``mask`` is True where a token is hidden (to be reconstructed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mimx.config import UserError
from mimx.devices import to_device


@dataclass
class Mask:
    """A batch of masks with a fixed visible count ``K`` per sample.

    Attributes:
        mask: ``[B, L]`` bool, True = hidden.
        ids_keep: ``[B, K]`` indices of the visible tokens, in shuffle order.
        ids_restore: ``[B, L]`` inverse permutation: position of each token in
            the (visible first, hidden after) shuffled order.
    """

    mask: torch.Tensor
    ids_keep: torch.Tensor
    ids_restore: torch.Tensor

    @property
    def num_visible(self) -> int:
        return self.ids_keep.shape[1]

    def to(self, device: torch.device | str | None) -> Mask:
        """The mask on ``device``; from the host to a GPU through pinned memory, without waiting for the GPU."""
        return Mask(*(to_device(t, device) for t in (self.mask, self.ids_keep, self.ids_restore)))

    def hidden_ids(self) -> torch.Tensor:
        """``[B, L - K]`` indices of the hidden tokens, ascending."""
        return self.ids_restore.argsort(dim=1)[:, self.num_visible:].sort(dim=1).values

    @staticmethod
    def from_bool(mask: torch.Tensor, num_visible: int | None = None) -> Mask:
        """Build ids from a boolean mask; every row must hide the same number of tokens.

        A generator that knows its exact ``num_visible`` passes it: the rows are
        then not read back to check and count them (no host synchronisation on
        a GPU, no graph break under ``torch.compile``).
        """
        if mask.dtype != torch.bool:
            mask = mask.bool()
        if num_visible is None:
            hidden = mask.sum(1)
            if hidden.numel() and not bool((hidden == hidden[0]).all()):
                raise ValueError(
                    f"masks hide different token counts per sample ({hidden.tolist()}); the encoder drops "
                    "hidden tokens, so every sample needs the same count (use an exact mask generator)"
                )
            num_visible = mask.shape[1] - (int(hidden[0]) if hidden.numel() else 0)
        # stable sort puts visible tokens (0) first, each group in index order
        ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        return Mask(mask, ids_shuffle[:, :num_visible], ids_restore)


def check_ratio(ratio: float, name: str = "mask ratio", example: str = "masking.ratio=0.75") -> float:
    """Return ``ratio`` if it lies strictly inside (0, 1), else raise one clear error ending with ``example``."""
    if not (isinstance(ratio, (int, float)) and 0.0 < float(ratio) < 1.0):
        raise UserError(f"{name} must be strictly between 0 and 1, got {ratio!r} (e.g. {example})")
    return float(ratio)


def num_visible(num_tokens: int, ratio: float) -> int:
    """Visible tokens for a mask ratio: ``floor(L * (1 - ratio))``, as MAE and transformers, at least 1."""
    return max(1, int(num_tokens * (1 - ratio)))


def random_mask(
    batch: int,
    num_tokens: int,
    ratio: float,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Mask:
    """MAE random masking: argsort of per-token noise; the lowest-noise tokens stay visible.

    Give ``noise`` (``[B, L]``) for a fully determined mask, or a ``generator``.
    """
    check_ratio(ratio)
    if noise is None:
        gen_device = generator.device if generator is not None else device
        noise = torch.rand(batch, num_tokens, generator=generator, device=gen_device)
    elif noise.shape != (batch, num_tokens):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(batch, num_tokens)}")
    if device is not None:
        noise = to_device(noise, device)
    keep = num_visible(num_tokens, ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = ids_restore >= keep
    return Mask(mask, ids_shuffle[:, :keep], ids_restore)


def tube_mask(
    batch: int,
    frames: int,
    tokens_per_frame: int,
    ratio: float,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Mask:
    """One spatial random mask repeated over ``frames`` (VideoMAE tube masking); tokens are time-major."""
    spatial = random_mask(batch, tokens_per_frame, ratio, noise=noise, generator=generator, device=device)
    return Mask.from_bool(spatial.mask.repeat(1, frames), num_visible=spatial.num_visible * frames)


def coarse_mask(
    batch: int,
    grid: tuple[int, int],
    cell: int,
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Mask:
    """SimMIM masking: random coarse cells of ``cell x cell`` patches, upsampled to the patch grid.

    Hides ``ceil(cells * ratio)`` cells, so exactly that many times ``cell**2`` patches.
    """
    check_ratio(ratio)
    h, w = grid
    if h % cell or w % cell:
        raise UserError(f"patch grid {h}x{w} is not divisible by the mask cell of {cell} patches")
    gh, gw = h // cell, w // cell
    cells = gh * gw
    hidden = min(cells - 1, math.ceil(cells * ratio))
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(batch, cells, generator=generator, device=gen_device)
    rank = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    coarse = (rank < hidden).view(batch, gh, gw)
    fine = coarse.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2).reshape(batch, h * w)
    return Mask.from_bool(to_device(fine, device), num_visible=(cells - hidden) * cell * cell)


def block_mask_numpy(
    grid: tuple[int, ...],
    num_hidden: int,
    rng: np.random.Generator,
    *,
    min_block: int = 16,
    max_block: int | None = None,
    min_aspect: float = 0.3,
    attempts: int = 10,
    exact: bool = True,
) -> np.ndarray:
    """BEiT block-wise masking for one sample: rectangles of random area and log-uniform aspect.

    On a ``(t, h, w)`` grid the blocks are cubes (MaskFeat's cube masking): a
    rectangle as above over a random run of 1 to ``t`` time steps, its area drawn
    for the budget left per time step. Blocks are added until ``num_hidden``
    tokens are hidden or no block fits in ``attempts`` tries; with ``exact`` the
    shortfall is filled with random tokens so the count is exactly
    ``num_hidden``. Cheap enough for data workers.
    """
    cube = len(grid) == 3
    t, h, w = grid if cube else (1, *grid)
    mask = np.zeros((t, h, w), dtype=bool)
    max_block = num_hidden if max_block is None else max_block
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    count = 0
    while count < num_hidden:
        budget = min(num_hidden - count, max_block)
        added = 0
        for _ in range(attempts):
            span, first = 1, 0
            if cube:  # 2-D grids draw nothing here: their masks stay what they were
                span = int(rng.integers(1, t + 1))
                first = int(rng.integers(0, t - span + 1))
            per_step = budget / span
            area = rng.uniform(min(min_block, per_step), per_step)
            aspect = math.exp(rng.uniform(*log_aspect))
            bh = int(round(math.sqrt(area * aspect)))
            bw = int(round(math.sqrt(area / aspect)))
            if 0 < bh < h and 0 < bw < w:
                top = int(rng.integers(0, h - bh + 1))
                left = int(rng.integers(0, w - bw + 1))
                block = mask[first : first + span, top : top + bh, left : left + bw]
                new = span * bh * bw - int(block.sum())
                if 0 < new <= budget:
                    block[...] = True
                    added = new
                    break
        if added == 0:
            break
        count += added
    if exact and count < num_hidden:
        free = np.flatnonzero(~mask.reshape(-1))
        mask.reshape(-1)[rng.choice(free, num_hidden - count, replace=False)] = True
    return mask.reshape(-1)


def block_mask(
    batch: int,
    grid: tuple[int, ...],
    ratio: float,
    *,
    seed: int | None = None,
    min_block: int = 16,
    min_aspect: float = 0.3,
    device: torch.device | str | None = None,
) -> Mask:
    """BEiT block-wise masks (cubes on a ``(t, h, w)`` grid) for a batch, exactly ``round(L * ratio)`` hidden each."""
    check_ratio(ratio)
    num_tokens = math.prod(grid)
    hidden = min(num_tokens - 1, int(round(num_tokens * ratio)))
    rng = np.random.default_rng(seed)
    rows = [block_mask_numpy(grid, hidden, rng, min_block=min_block, min_aspect=min_aspect) for _ in range(batch)]
    # exact counts, and ids built on the host before the move: no read back from the device
    return Mask.from_bool(torch.from_numpy(np.stack(rows)), num_visible=num_tokens - hidden).to(device)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``x[b, ids[b]]`` for ``x`` of shape ``[B, L, ...]``."""
    index = ids.reshape(*ids.shape, *([1] * (x.dim() - 2))).expand(*ids.shape, *x.shape[2:])
    return torch.gather(x, 1, index)


def _seed_from(generator: torch.Generator | None) -> int | None:
    if generator is None:
        return None
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


class RandomMasking:
    """MAE: hide a random ``ratio`` of the tokens, independently per sample."""

    def __init__(self, ratio: float = 0.75) -> None:
        self.ratio = check_ratio(ratio)

    def __call__(self, batch: int, num_tokens: int, layout, *, noise=None, generator=None, device=None) -> Mask:
        return random_mask(batch, num_tokens, self.ratio, noise=noise, generator=generator, device=device)

    def __repr__(self) -> str:
        return f"RandomMasking(ratio={self.ratio})"


class TubeMasking:
    """VideoMAE: one spatial random mask shared by all time steps of a ``(t, h, w)`` grid."""

    def __init__(self, ratio: float = 0.9) -> None:
        self.ratio = check_ratio(ratio)

    def __call__(self, batch: int, num_tokens: int, layout, *, noise=None, generator=None, device=None) -> Mask:
        t, h, w = layout
        return tube_mask(batch, t, h * w, self.ratio, noise=noise, generator=generator, device=device)


class BlockMasking:
    """BEiT block-wise masking on a 2-D ``(h, w)`` grid (cube masking on a ``(t, h, w)`` one), exact hidden count."""

    on_host = True  # drawn with numpy: give it a CPU generator (a device one is read back every call)

    def __init__(self, ratio: float = 0.4, min_block: int = 16, min_aspect: float = 0.3) -> None:
        self.ratio = check_ratio(ratio)
        self.min_block = min_block
        self.min_aspect = min_aspect

    @torch.compiler.disable  # host code (numpy); under torch.compile the model runs it eagerly, between graphs
    def __call__(self, batch: int, num_tokens: int, layout, *, noise=None, generator=None, device=None) -> Mask:
        if noise is not None:
            raise ValueError("block masking is driven by a generator, not by a noise tensor")
        return block_mask(batch, tuple(layout), self.ratio, seed=_seed_from(generator),
                          min_block=self.min_block, min_aspect=self.min_aspect, device=device)


class CoarseMasking:
    """SimMIM: random cells of ``cell x cell`` patches on a 2-D grid."""

    def __init__(self, ratio: float = 0.6, cell: int = 2) -> None:
        self.ratio = check_ratio(ratio)
        self.cell = cell

    def __call__(self, batch: int, num_tokens: int, layout, *, noise=None, generator=None, device=None) -> Mask:
        if noise is not None:
            raise ValueError("coarse masking is driven by a generator, not by a noise tensor")
        return coarse_mask(batch, tuple(layout), self.cell, self.ratio, generator=generator, device=device)


def running_cell_pattern(grid: tuple[int, int, int], ratio: float, cell: int = 2) -> torch.Tensor:
    """VideoMAE v2's running-cell pattern on a ``(t, h, w)`` grid: True where the decoder reconstructs.

    The grid is tiled with ``cell x cell`` cells; in frame ``t`` the positions
    ``t, t+1, ..., t+keep-1`` (mod cell², raster order in the cell) are kept,
    ``keep = round(cell² * (1 - ratio))``, so the kept set runs through the cell
    over time and every position is reconstructed in some frame.
    """
    t, h, w = grid
    per_cell = cell * cell
    keep = max(1, round(per_cell * (1 - check_ratio(ratio, "decoder mask ratio", "model.decoder_mask_ratio=0.5"))))
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    slot = ((ys % cell) * cell + xs % cell).reshape(1, -1)
    offset = (slot - torch.arange(t).reshape(-1, 1)) % per_cell
    return (offset < keep).reshape(-1)


def decode_subset(
    mask: Mask,
    grid: tuple[int, int, int],
    ratio: float,
    *,
    cell: int = 2,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """VideoMAE v2 dual masking: ``[B, K_d]`` ids of the hidden tokens the decoder reconstructs.

    ``K_d = round(hidden * (1 - ratio))`` in every sample (so the decoder
    batches without padding); hidden tokens in the running-cell pattern come
    first, ties and the remainder are broken by ``noise`` (``[B, L]`` in [0, 1))
    or by ``generator``.
    """
    batch, length = mask.mask.shape
    hidden = length - mask.num_visible
    count = max(1, round(hidden * (1 - check_ratio(ratio, "decoder mask ratio", "model.decoder_mask_ratio=0.5"))))
    device = mask.mask.device
    if noise is None:
        noise = torch.rand(batch, length, generator=generator, device=device)
    pattern = to_device(running_cell_pattern(grid, ratio, cell), device)
    score = pattern.to(noise.dtype).unsqueeze(0) + 0.5 * to_device(noise, device)
    score = score.masked_fill(~mask.mask, -1.0)
    ids = score.topk(count, dim=1).indices
    return ids.sort(dim=1).values


class RunningCellDecoding:
    """VideoMAE v2 decoder masking: reconstruct ``1 - ratio`` of the hidden tokens, running-cell first."""

    def __init__(self, ratio: float = 0.5, cell: int = 2) -> None:
        self.ratio = check_ratio(ratio, "decoder mask ratio", "model.decoder_mask_ratio=0.5")
        self.cell = cell

    def __call__(self, mask: Mask, layout, *, noise=None, generator=None) -> torch.Tensor:
        return decode_subset(mask, tuple(layout), self.ratio, cell=self.cell, noise=noise, generator=generator)

    def __repr__(self) -> str:
        return f"RunningCellDecoding(ratio={self.ratio}, cell={self.cell})"


def sample_dirichlet(batch: int, alpha: float | Sequence[float], groups: int, *, present: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Weights ``[B, M]`` from Dirichlet(``alpha``) over the groups ``present`` (others get 0).

    Drawn from a seed taken from ``generator`` (same generator state, same weights) without
    touching the global random state.
    """
    concentration = torch.as_tensor(alpha, dtype=torch.float32).expand(groups).clone()
    if bool((concentration <= 0).any()):
        raise UserError(f"Dirichlet alpha must be positive, got {alpha!r}")
    seed = _seed_from(generator)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        draws = torch.distributions.Gamma(concentration, torch.ones(groups)).sample((batch,))
    draws = draws.clamp_min(1e-12)
    if present is not None:
        draws = draws * present.to(draws.device, torch.float32)
    return to_device(draws / draws.sum(1, keepdim=True).clamp_min(1e-12), device)


def split_budget(weights: torch.Tensor, lengths: Sequence[int] | torch.Tensor, total: int) -> torch.Tensor:
    """Integer counts ``[B, M]`` that sum to exactly ``total`` per row, close to ``weights * total``.

    Largest-remainder rounding. No group gets more than its length (``lengths``: one per group, or
    ``[B, M]`` per sample, 0 for a group a sample lacks); a group with weight 0 gets tokens only
    when the weighted ones are full. Raises when ``total`` exceeds the tokens available.
    """
    caps = torch.as_tensor(lengths if isinstance(lengths, torch.Tensor) else list(lengths),
                           device=weights.device).long().expand_as(weights)
    if total > int(caps.sum(1).min()):
        raise UserError(f"{total} visible tokens asked for, but a sample's groups hold only {int(caps.sum(1).min())}")
    ideal = weights.float() * total
    counts = torch.minimum(ideal.floor().long(), caps)
    priority = ideal - counts + (weights > 0).float()  # groups with weight first, then the largest remainders
    for _ in range(total + 1):
        deficit = total - counts.sum(1)
        if not bool((deficit > 0).any()):
            break
        room = counts < caps
        pick = torch.where(room, priority, torch.full_like(priority, -torch.inf)).argmax(1)
        give = (deficit > 0).long()
        counts = counts.scatter_add(1, pick[:, None], give[:, None])
        priority = priority.scatter_add(1, pick[:, None], -give[:, None].float())
    return counts


def group_budget_mask(lengths: Sequence[int], counts: torch.Tensor, *, noise: torch.Tensor | None = None,
                      generator: torch.Generator | None = None, device=None) -> Mask:
    """MultiMAE masking over groups of tokens laid end to end (one group per modality).

    ``counts [B, M]`` visible tokens per group (e.g. from :func:`split_budget`, the same total in
    every row so the encoder batches without padding); within a group the visible tokens are the
    ones with the lowest ``noise`` (``[B, sum(lengths)]``, drawn from ``generator`` when not given).
    The mask is built on ``device`` (default: ``counts``'); counts kept on the host are checked
    without a read back from the device.
    """
    batch, total_len = counts.shape[0], int(sum(lengths))
    visible = counts.sum(1)
    if bool((visible != visible[0]).any()):
        raise ValueError("every sample needs the same visible count")
    num_visible = int(visible[0])
    device = counts.device if device is None else torch.device(device)
    if noise is None:
        noise = torch.rand(batch, total_len, generator=generator,
                           device=generator.device if generator is not None else device)
    noise, counts = to_device(noise, device), to_device(counts, device)
    keep = torch.zeros(batch, total_len, dtype=torch.bool, device=device)
    start = 0
    for m, length in enumerate(lengths):
        ranks = noise[:, start:start + length].argsort(1).argsort(1)
        keep[:, start:start + length] = ranks < counts[:, m:m + 1]
        start += length
    score = noise + (~keep).float() * 2  # kept tokens first, each set in noise order
    ids_shuffle = score.argsort(1)
    ids_restore = ids_shuffle.argsort(1)
    return Mask(~keep, ids_shuffle[:, :num_visible], ids_restore)


MASKINGS = {"random": RandomMasking, "tube": TubeMasking, "block": BlockMasking, "coarse": CoarseMasking}


def build_masking(kind: str, *, kinds: tuple[str, ...] = tuple(MASKINGS),
                  **kwargs) -> RandomMasking | TubeMasking | BlockMasking | CoarseMasking:
    """Masking generator by name (``random``, ``tube``, ``block``, ``coarse``), one of the modality's ``kinds``."""
    if kind not in kinds:
        raise UserError(f"unknown masking.kind {kind!r} for this modality; choose one of {', '.join(kinds)}")
    return MASKINGS[kind](**kwargs)
