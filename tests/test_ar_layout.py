"""GroupLayout against a hand-built layout: prefix 2, 2 frames, scales (1x1, 2x2)."""
import pytest
import torch

from mmgen.ar.layout import GroupLayout


@pytest.fixture
def layout():
    return GroupLayout(prefix_len=2, num_frames=2, scales=[1, 2])


# token order: p0 p1 | f0s0 | f0s1 (4 tokens) | f1s0 | f1s1 (4 tokens)  -> L = 12
GROUPS = [0, 1, 2, 3, 3, 3, 3, 4, 5, 5, 5, 5]
FRAMES = [-1, -1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
SCALES = [-1, -1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1]
POS = [[0, 0, 0], [1, 1, 1],
       [2, 2, 2], [2, 2, 2], [2, 2, 3], [2, 3, 2], [2, 3, 3],
       [3, 2, 2], [3, 2, 2], [3, 2, 3], [3, 3, 2], [3, 3, 3]]


def _expected_mask():
    g = torch.tensor(GROUPS)
    return g[None, :] <= g[:, None]


def test_table_matches_hand_built(layout):
    assert layout.length == 12 and layout.num_visual == 10 and layout.num_groups == 6
    assert layout.group_id.tolist() == GROUPS
    assert layout.frame_id.tolist() == FRAMES
    assert layout.scale_id.tolist() == SCALES
    assert torch.equal(layout.pos, torch.tensor(POS, dtype=torch.float32))


def test_mask_is_exactly_group_causal(layout):
    expected = torch.tensor([
        # p0 p1 a  b1 b2 b3 b4 c  d1 d2 d3 d4
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # p0
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # p1
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # f0 s0
        [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],  # f0 s1 (x4)
        [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],  # f1 s0
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # f1 s1 (x4)
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(layout.group_mask(), expected)
    assert torch.equal(expected, _expected_mask())
    assert layout.allowed_pairs() == int(expected.sum())


def test_random_frame_mask_drops_frames_but_never_prefix_or_self(layout):
    keep = torch.zeros(1, 2, 2, dtype=torch.bool)  # drop every past frame
    m = layout.group_mask(keep)[0, 0]
    # frame 1 tokens no longer see frame 0, still see prefix and their own frame
    f1 = slice(7, 12)
    assert not m[f1, 2:7].any()
    assert m[f1, 0:2].all()
    assert torch.equal(m[8:12, 7:12], torch.ones(4, 5, dtype=torch.bool))
    # frame 0 unchanged
    assert torch.equal(m[:7], layout.group_mask()[:7])
    # keep everything -> identical to the plain mask
    assert torch.equal(layout.group_mask(torch.ones(1, 2, 2, dtype=torch.bool))[0, 0], layout.group_mask())


def test_frame_window_limits_history():
    lay = GroupLayout(1, 4, [1], window=1)
    vis = lay.frame_visibility()
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(vis, expected)
    m = lay.group_mask()
    # token i+1 is frame i: frame 3 sees the prefix and frame 2, not frames 0 and 1
    assert m[4].tolist() == [True, False, False, True, True]


def test_sample_frame_keep_rate():
    lay = GroupLayout(1, 8, [1])
    keep = lay.sample_frame_keep(200, 0.3, torch.Generator().manual_seed(0))
    assert keep.shape == (200, 8, 8)
    assert abs(keep.float().mean().item() - 0.7) < 0.02


def test_finest_grid_positions_are_centre_aligned():
    lay = GroupLayout(2, 1, [1, 2, 4], pos_mode="finest_grid")
    # scale 0 (1x1) sits at the centre of the 4x4 grid: (0.5 * 4) - 0.5 = 1.5
    assert lay.pos[lay.group_slice(0, 0)].tolist() == [[2.0, 3.5, 3.5]]
    # scale 1 (2x2): (h + 0.5) * 2 - 0.5 -> 0.5, 2.5
    assert lay.pos[lay.group_slice(0, 1)][:, 1].tolist() == [2.5, 2.5, 4.5, 4.5]
    # finest scale unchanged
    own = GroupLayout(2, 1, [1, 2, 4])
    assert torch.equal(lay.pos[lay.group_slice(0, 2)], own.pos[own.group_slice(0, 2)])


def test_flatten_roundtrip_and_slices(layout):
    per_scale = [torch.randn(3, 2, 1, 1, 5), torch.randn(3, 2, 2, 2, 5)]
    flat = layout.flatten_visual(per_scale)
    assert flat.shape == (3, 10, 5)
    assert torch.equal(flat[:, layout.visual_slice(1, 1)], per_scale[1][:, 1].reshape(3, 4, 5))
    assert torch.equal(flat[:, layout.visual_slice(1, 0)], per_scale[0][:, 1].reshape(3, 1, 5))
    back = layout.unflatten_visual(flat)
    assert all(torch.equal(a, b) for a, b in zip(back, per_scale))
    assert layout.group_slice(1, 1) == slice(8, 12)
    with pytest.raises(ValueError, match="scale 1"):
        layout.flatten_visual([per_scale[0], torch.randn(3, 2, 3, 3, 5)])
    with pytest.raises(IndexError):
        layout.group_index(2, 0)


def test_bad_layout_arguments():
    with pytest.raises(ValueError, match="prefix_len"):
        GroupLayout(0, 1, [1])
    with pytest.raises(ValueError, match="pos_mode"):
        GroupLayout(1, 1, [1], pos_mode="stretched")
