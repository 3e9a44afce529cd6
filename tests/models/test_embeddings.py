"""Fixed-size embeddings of TimeSformer, VideoMAE and UniFormerV2 interpolated to each grid shape."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmaction.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmmultigrid.models.embeddings import adapt_embeddings, embedding_problems
from mmmultigrid.data.synthetic_videos import SyntheticDataset
from runs import train, write_tiny_multigrid_config
from test_multigrid_hook import iterations, read_trace
from test_preflight import make_plan

# Base shape of every tiny model: T=8 frames of 32 x 32 px, patches of 8 px (4 x 4 patches).
BASE = (8, 32)
TINY = {
    'timesformer-divided': dict(type='TimeSformer', num_frames=8, img_size=32, patch_size=8,
                                embed_dims=16, num_heads=2, num_transformer_layers=1),
    'timesformer-joint': dict(type='TimeSformer', num_frames=8, img_size=32, patch_size=8, embed_dims=16,
                              num_heads=2, num_transformer_layers=1, attention_type='joint_space_time'),
    'timesformer-space-only': dict(type='TimeSformer', num_frames=8, img_size=32, patch_size=8,
                                   embed_dims=16, num_heads=2, num_transformer_layers=1,
                                   attention_type='space_only'),
    'videomae': dict(type='VisionTransformer', img_size=32, patch_size=8, embed_dims=16, depth=1,
                     num_heads=2, num_frames=8, tubelet_size=2),
    'videomae-learnable': dict(type='VisionTransformer', img_size=32, patch_size=8, embed_dims=16,
                               depth=1, num_heads=2, num_frames=8, tubelet_size=2,
                               use_learnable_pos_emb=True),
    'uniformerv2': dict(type='UniFormerV2', input_resolution=32, patch_size=8, width=16, layers=2,
                        heads=2, t_size=8, return_list=[0, 1], n_layers=2, n_dim=16, n_head=2,
                        clip_pretrained=False, no_lmhra=False, double_lmhra=True),
    'uniformerv2-downsample': dict(type='UniFormerV2', input_resolution=32, patch_size=8, width=16,
                                   layers=2, heads=2, t_size=8, temporal_downsample=True,
                                   return_list=[0, 1], n_layers=2, n_dim=16, n_head=2,
                                   clip_pretrained=False),
}
EMBEDDINGS = {'TimeSformer': ('pos_embed', 'time_embed'), 'VisionTransformer': ('pos_embed', ),
              'UniFormerV2': ('positional_embedding', )}


@pytest.fixture(scope='module', autouse=True)
def mmaction_scope() -> None:
    init_default_scope('mmaction')


def build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS.build(TINY[kind])
    model.init_weights()  # random embeddings (TimeSformer's are zeros until then)
    return model.eval()


def clips(batch: int, clip_len: int, crop_size: int) -> torch.Tensor:
    return torch.randn(batch, 3, clip_len, crop_size, crop_size, generator=torch.Generator().manual_seed(1))


def grid_shapes() -> list[tuple[int, int]]:
    """The distinct (T, S) of the default plan of the base shape: T 2, 4, 8 and S 16, 23, 32."""
    return sorted({(g.clip_len, g.crop_size) for g in make_plan(clip_len=BASE[0],
                                                                crop_size=BASE[1]).shape_segments()})


@pytest.mark.parametrize('kind', list(TINY))
def test_adapted_model_runs_every_grid_shape_and_keeps_its_state_dict(kind: str) -> None:
    model = build(kind)
    with pytest.raises(RuntimeError):  # the plain model cannot take half the frames and the crop
        model(clips(1, 4, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert adapt_embeddings(model)
    for clip_len, crop_size in grid_shapes():
        model(clips(2, clip_len, crop_size)).sum().backward()
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize('kind', list(TINY))
def test_base_shape_and_checkpoint_are_the_plain_models(kind: str) -> None:
    plain, adapted = build(kind), build(kind)
    adapt_embeddings(adapted)
    x = clips(2, *BASE)
    assert torch.equal(adapted(x), plain(x))
    fresh = MODELS.build(TINY[kind]).eval()
    fresh.load_state_dict(adapted.state_dict(), strict=True)  # a multigrid checkpoint, plain model
    assert torch.equal(fresh(x), plain(x))


@pytest.mark.parametrize('kind', ['timesformer-joint', 'videomae-learnable', 'uniformerv2'])
def test_gradients_reach_the_stored_embeddings(kind: str) -> None:
    model = build(kind)
    adapt_embeddings(model)
    out = model(clips(2, 4, 16))
    (out * torch.randn_like(out)).sum().backward()  # not out.sum(): a final LayerNorm makes it constant
    params = dict(model.named_parameters())
    names = [n for n in EMBEDDINGS[TINY[kind]['type']] if n in params]
    assert names
    for name in names:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


def test_uniformerv2_clips_of_a_batch_stay_apart_at_another_t() -> None:
    """The plain model takes 2 clips of T=4 as 1 clip of its T=8, silently; the adapted one does not."""
    model = build('uniformerv2')
    pair = clips(2, 4, 32)
    plain_pair = model(pair)
    assert plain_pair.shape[0] == 1  # two clips came out as one
    adapt_embeddings(model)
    alone = torch.cat([model(pair[:1]), model(pair[1:])])
    torch.testing.assert_close(model(pair), alone)


def test_shapes_with_no_token_are_named() -> None:
    model = build('videomae')  # tubelets of 2 frames
    adapt_embeddings(model)
    plan = make_plan(clip_len=4, crop_size=32)  # the first long-cycle shape has T=1: 0 tubelets
    problems = embedding_problems(model, plan)
    assert problems and all('T=1' in p for p in problems)
    assert 'model (VisionTransformer) would get 0x2x2 tokens' in problems[0]
    assert 'pos_embed (4x4x4 tubelets' in problems[0] and 'base grid 4x4x4' in problems[0]
    assert not embedding_problems(model, make_plan(clip_len=8, crop_size=32))


def test_training_adapts_the_model_and_the_checkpoint_loads_into_the_plain_model(
        synthetic_dataset: SyntheticDataset, tmp_path: Path) -> None:
    backbone = dict(TINY['timesformer-divided'], type='TimeSformer')
    config = write_tiny_multigrid_config(tmp_path / 'config.py', synthetic_dataset, extra=f"""
model = dict(_delete_=True, type='Recognizer3D', backbone={backbone!r},
             cls_head=dict(type='TimeSformerHead', num_classes={synthetic_dataset.num_classes},
                           in_channels=16),
             data_preprocessor=dict(type='ActionDataPreprocessor', format_shape='NCTHW'))
""")
    done = train(config, tmp_path / 'work')
    assert 'MultigridHook: backbone (TimeSformer): pos_embed (4x4 patches + class token) and ' \
           'time_embed (8 frames) interpolated' in done.stdout + done.stderr
    trace = iterations(read_trace(tmp_path / 'work' / 'multigrid_trace.rank0.jsonl'))
    assert {(r['clip_len'], r['crop_size']) for r in trace} == set(grid_shapes())
    cfg = Config.fromfile(config)
    plain = MODELS.build(cfg.model).eval()
    checkpoint = torch.load(tmp_path / 'work' / 'epoch_6.pth', map_location='cpu', weights_only=False)
    plain.load_state_dict(checkpoint['state_dict'], strict=True)
    scores = plain(clips(1, *BASE)[:, None], mode='tensor')
    assert torch.isfinite(scores).all()
