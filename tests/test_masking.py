import pytest
import torch

from audiossl.objectives.masking import JepaMaskConfig, inverse_block_mask, jepa_masks, keep_to_mask, random_mask


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_mask_counts_and_partition():
    keep, masked = random_mask(6, 512, 0.8, gen())
    assert keep.shape == (6, 102) and masked.shape == (6, 410)
    for k, m in zip(keep, masked):
        assert torch.equal(torch.sort(torch.cat([k, m])).values, torch.arange(512))
        assert torch.all(k[1:] > k[:-1]) and torch.all(m[1:] > m[:-1])
    # uniform: each patch kept ~20% of the time over many draws
    keep, _ = random_mask(2000, 64, 0.8, gen(1))
    freq = torch.bincount(keep.flatten(), minlength=64).float() / 2000
    assert (freq - 12 / 64).abs().max() < 0.05


def test_eat_mask_keeps_exactly_102_of_512_in_blocks():
    keep, masked = inverse_block_mask(64, (64, 8), generator=gen())
    assert keep.shape == (64, 102) and masked.shape == (64, 410)
    assert abs(masked.shape[1] / 512 - 0.801) < 1e-3
    for k, m in zip(keep, masked):
        assert torch.equal(torch.sort(torch.cat([k, m])).values, torch.arange(512))


def _components(visible: torch.Tensor, T: int, F: int) -> list[int]:
    """Sizes of 4-connected components of visible patches on the (T, F) grid."""
    grid = visible.view(T, F).tolist()
    seen, sizes = set(), []
    for t in range(T):
        for f in range(F):
            if grid[t][f] and (t, f) not in seen:
                stack, n = [(t, f)], 0
                seen.add((t, f))
                while stack:
                    a, b = stack.pop()
                    n += 1
                    for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        c, d = a + da, b + db
                        if 0 <= c < T and 0 <= d < F and grid[c][d] and (c, d) not in seen:
                            seen.add((c, d))
                            stack.append((c, d))
                sizes.append(n)
    return sizes


def test_eat_mask_visible_patches_are_contiguous_blocks():
    keep, _ = inverse_block_mask(200, (64, 8), generator=gen(3))
    vis = ~keep_to_mask(keep, 512)
    big = []
    for row in vis:
        sizes = _components(row, 64, 8)
        big.append(max(sizes))
    # 5 centres of 5x5 blocks (clamped at the 8-wide edges: at least 5x3 = 15) hold most of the 102 visible patches
    assert sum(b >= 15 for b in big) / len(big) > 0.95
    # versus random masking, the visible set is far more clustered
    rk, _ = random_mask(200, 512, 0.8, gen(4))
    rbig = [max(_components(~keep_to_mask(k[None], 512)[0], 64, 8)) for k in rk]
    assert sum(big) / len(big) > 3 * sum(rbig) / len(rbig)


def test_eat_mask_clones_differ_and_seed_reproduces():
    a, _ = inverse_block_mask(16, (64, 8), generator=gen(7))
    b, _ = inverse_block_mask(16, (64, 8), generator=gen(7))
    assert torch.equal(a, b)
    assert len({tuple(r.tolist()) for r in a}) == 16


@pytest.mark.parametrize("grid,ratio,block", [((13, 8), 0.8, 3), ((8, 8), 0.75, 5), ((100, 4), 0.8, 5)])
def test_eat_mask_any_grid(grid, ratio, block):
    N = grid[0] * grid[1]
    keep, masked = inverse_block_mask(5, grid, ratio, block, generator=gen())
    assert keep.shape == (5, int(N * (1 - ratio)))
    assert keep.max() < N and masked.shape[1] == N - keep.shape[1]


def test_jepa_masks_shapes_disjoint_and_curriculum():
    cfg = JepaMaskConfig()
    T, F = 64, 8
    ctx, tgts = jepa_masks(8, (T, F), 0.0, cfg, gen())
    assert len(tgts) == cfg.num_targets
    for t in tgts:
        assert t.shape[0] == 8
        for c, tt in zip(ctx, t):  # context never contains a target patch
            assert not set(c.tolist()) & set(tt.tolist())
    # at the end of the curriculum every target is a full-band time strip or a full-time frequency band
    n_strips = 0
    for seed in range(20):
        _, tgts = jepa_masks(2, (T, F), 1.0, cfg, gen(seed))
        for t in tgts:
            rows = t[0] // F
            cols = t[0] % F
            full_band = set(cols.tolist()) == set(range(F))
            full_time = set(rows.tolist()) == set(range(T))
            n_strips += full_band or full_time
    assert n_strips == 20 * cfg.num_targets
    # at the start, random rectangles: not full-time bands
    _, tgts = jepa_masks(2, (T, F), 0.0, cfg, gen(1))
    assert all(len(set((t[0] // F).tolist())) < T for t in tgts)


def test_jepa_random_targets_share_one_ijepa_size():
    """I-JEPA ``MaskCollator``: one ``p_size`` per batch for all target blocks, scale and aspect from the *same*
    uniform (``_sample_block_size``), capped below the grid."""
    import math

    from audiossl.objectives.masking import JepaMaskConfig, ijepa_block_size, jepa_masks

    def sample_block_size(_rand, height, width, scale, aspect_ratio_scale):  # transcription
        min_s, max_s = scale
        mask_scale = min_s + _rand * (max_s - min_s)
        max_keep = int(height * width * mask_scale)
        min_ar, max_ar = aspect_ratio_scale
        aspect_ratio = min_ar + _rand * (max_ar - min_ar)
        h = int(round(math.sqrt(max_keep * aspect_ratio)))
        w = int(round(math.sqrt(max_keep / aspect_ratio)))
        while h >= height:
            h -= 1
        while w >= width:
            w -= 1
        return h, w

    for u in torch.linspace(0, 1, 41).tolist():
        for T, F in ((64, 8), (12, 8), (14, 14)):
            h, w = ijepa_block_size(u, torch.tensor([T]), F, (0.15, 0.2), (0.75, 1.5))
            assert (int(h), int(w)) == sample_block_size(u, T, F, (0.15, 0.2), (0.75, 1.5)), (u, T, F)
    cfg = JepaMaskConfig()
    for seed in range(5):
        _, targets = jepa_masks(6, (64, 8), 0.0, cfg, torch.Generator().manual_seed(seed))
        sizes = {t.shape[1] for t in targets}
        assert len(sizes) == 1  # the same block size for every target and every clip
    _, targets = jepa_masks(6, (64, 8), 0.0, JepaMaskConfig(block_sizes="independent"), torch.Generator().manual_seed(0))
    assert len({t.shape[1] for t in targets}) > 1
