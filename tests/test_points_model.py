"""Point-MAE: grouping, masking counts, positions at every block, Chamfer loss, features, classifier."""

from __future__ import annotations

import pytest
import torch

from mimx.masking import gather_tokens
from mimx.modalities.points.classifier import PointClassifier
from mimx.modalities.points.model import BlockGroupMasking, PointMAE, point_mae_config
from mimx.modalities.points.ops import chamfer_distance, farthest_point_sample
from mimx.transformer import MaskedEncoder


def tiny(**overrides) -> PointMAE:
    values = dict(num_points=256, num_groups=16, group_size=16, embed_dim=48, depth=2, num_heads=3,
                  decoder_dim=32, decoder_depth=1, decoder_heads=2, drop_path=0.0, pointnet_dims=[16, 32, 64],
                  pos_hidden=16, backend="torch")
    torch.manual_seed(0)
    return PointMAE(point_mae_config({**values, **overrides}))


def clouds(batch: int = 3, n: int = 256) -> torch.Tensor:
    return torch.randn(batch, n, 3, generator=torch.Generator().manual_seed(1))


def test_groups_are_fps_centres_with_relative_nearest_neighbours():
    model = tiny()
    x = clouds()
    layout = model.groups(x)
    centres, _ = farthest_point_sample(x, 16, backend="torch")
    torch.testing.assert_close(layout.centres, centres)
    assert layout.neighbourhood.shape == (3, 16, 16, 3)
    # the centre itself is its own nearest neighbour: the first relative point is 0
    assert layout.neighbourhood[:, :, 0].abs().max() == 0
    # every neighbour is a point of the cloud
    absolute = layout.neighbourhood + layout.centres.unsqueeze(2)
    distance = torch.cdist(absolute.flatten(1, 2), x, compute_mode="donot_use_mm_for_euclid_dist").amin(-1)
    assert distance.max() < 1e-5


@pytest.mark.parametrize("kind", ["random", "block"])
def test_masking_hides_an_exact_number_of_groups(kind):
    model = tiny(masking={"kind": kind, "ratio": 0.6})
    out = model(clouds(), noise=torch.rand(3, 16, generator=torch.Generator().manual_seed(2)))
    assert out.mask.mask.sum(1).tolist() == [16 - int(16 * 0.4)] * 3
    assert out.mask.ids_keep.shape == (3, int(16 * 0.4))


def test_block_masking_hides_the_groups_nearest_the_seed_centre():
    model = tiny()
    layout = model.groups(clouds())
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(3))
    mask = BlockGroupMasking(0.5)(3, 16, layout, noise=noise)
    seed = layout.centres[torch.arange(3), noise.argmax(1)]
    distance = (layout.centres - seed[:, None]).norm(dim=-1)
    for b in range(3):
        hidden, visible = distance[b][mask.mask[b]], distance[b][~mask.mask[b]]
        assert hidden.max() <= visible.min()
        assert mask.mask[b, noise[b].argmax()]  # the seed group itself is hidden


def test_forward_is_deterministic_and_scores_chamfer_on_hidden_groups():
    model = tiny().eval()
    x, noise = clouds(), torch.rand(3, 16, generator=torch.Generator().manual_seed(4))
    a, b = model(x, noise=noise), model(x, noise=noise)
    torch.testing.assert_close(a.loss, b.loss)
    hidden = a.mask.mask
    pred = a.pred[hidden].reshape(-1, 16, 3)
    true = a.layout.neighbourhood[hidden]
    torch.testing.assert_close(a.loss, chamfer_distance(pred, true, backend="torch"))
    a.loss.backward()
    assert model.tokenizer.embed.first[0].weight.grad.abs().sum() > 0


def test_encoder_adds_positions_at_every_block_like_point_mae():
    torch.manual_seed(0)
    encoder = MaskedEncoder(32, 2, 2, class_token=False, pos_every_block=True).eval()
    tokens, pos = torch.randn(2, 10, 32), torch.randn(2, 10, 32)
    mask = tiny().masking(2, 10, None, noise=torch.rand(2, 10))
    x, p = gather_tokens(tokens, mask.ids_keep), gather_tokens(pos, mask.ids_keep)
    for block in encoder.blocks:  # Point-MAE's TransformerEncoder: x = block(x + pos)
        x = block(x + p)
    torch.testing.assert_close(encoder(tokens, pos, mask), encoder.norm(x))


def test_features_pool_max_and_mean_without_masking():
    model = tiny().eval()
    x = clouds()
    tokens = model.features(x, pool="tokens")
    assert tokens.shape == (3, 16, 48)
    torch.testing.assert_close(model.features(x), torch.cat([tokens.amax(1), tokens.mean(1)], -1))


def test_classifier_starts_from_the_encoder_and_averages_votes():
    model = tiny().eval()
    classifier = PointClassifier(model, num_classes=5).eval()
    x = clouds()
    with torch.no_grad():
        feats = classifier.forward_features(x)
        tokens = model.features(x, pool="tokens")
    torch.testing.assert_close(feats, torch.cat([tokens.amax(1), tokens.mean(1)], -1))
    views = torch.stack([x, x * 1.1], dim=1)
    with torch.no_grad():
        voted = classifier(views)
        single = torch.stack([classifier(x).softmax(-1), classifier(x * 1.1).softmax(-1)]).mean(0)
    torch.testing.assert_close(voted.exp(), single)


def test_too_few_points_is_one_clear_error():
    from mimx.config import UserError

    with pytest.raises(UserError, match="num_groups"):
        tiny()(torch.randn(2, 8, 3))
