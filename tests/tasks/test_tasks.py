"""Task behaviour: fixed VOS assignment, loss sanity on constructed outputs, hot-swap of one checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from vidseg.data.datamodule import EvalVideoDataset
from vidseg.data.records import Batch, ClipSample
from vidseg.model.decoder import DecoderOutput
from vidseg.model.queries import QueryGroup, QuerySet
from vidseg.tasks.vis import semantic_target_from_instances
from vidseg.tasks.vos import VOSTask
from vidseg.utils.run import build_datamodule, build_module

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def _fake_output(groups: dict[str, torch.Tensor]) -> DecoderOutput:
    """A DecoderOutput whose only prediction holds the given per-group mask logits [B, n, T, h, w]."""
    d = 8
    qgroups = [QueryGroup(n, torch.zeros(v.shape[1], d), torch.zeros(d)) for n, v in groups.items()]
    qs = QuerySet(qgroups)
    logits = torch.cat(list(groups.values()), 1)
    b, q = logits.shape[:2]
    return DecoderOutput([logits], [torch.zeros(b, q, d)], [torch.zeros(b, q, d)], qs)


def _sample(masks: torch.Tensor) -> ClipSample:
    n, t, h, w = masks.shape
    return ClipSample(frames=torch.zeros(t, 3, h, w, dtype=torch.uint8), masks=masks,
                      track_ids=torch.arange(1, n + 1), class_ids=torch.full((n,), -1),
                      pad_mask=torch.ones(h, w, dtype=torch.bool), prompt_frames=torch.zeros(n, dtype=torch.long),
                      dataset="d")


def test_vos_fixed_assignment_maps_objects_in_gt_order() -> None:
    task = VOSTask(background_grid=1, num_points=None)
    t, h, w = 2, 8, 8
    masks = torch.zeros(2, t, h, w, dtype=torch.bool)
    masks[0, :, :4] = True  # object 1: top half
    masks[1, :, 4:, :4] = True  # object 2: bottom-left quarter
    target = {0: masks[0], 1: masks[1]}
    # 'vos' queries: 2 per object, owners [0, 0, 1, 1]; the first sub-query of each object predicts it
    vos = torch.full((1, 4, t, h, w), -10.0)
    vos[0, 0][target[0]] = 10.0
    vos[0, 2][target[1]] = 10.0
    bg = torch.where(masks.any(0), -10.0, 10.0)[None, None]
    out = _fake_output({"background_vos": bg, "vos": vos})
    out.query_set.owners, out.query_set.num_objects = [0, 0, 1, 1], 2
    logits = task.object_logits(out, -1, out.query_set.owners, 2)
    assert torch.equal(logits[0, 1] > 0, masks[0]) and torch.equal(logits[0, 2] > 0, masks[1])
    batch = Batch("vos", "d", torch.zeros(1, t, 3, h, w, dtype=torch.uint8), torch.ones(1, h, w, dtype=torch.bool),
                  [_sample(masks)])
    perfect = task.loss(None, None, out.query_set, out, batch)
    swapped_owners = QuerySet(list(out.query_set.groups))
    swapped_owners.owners, swapped_owners.num_objects = [1, 1, 0, 0], 2
    swapped = task.loss(None, None, swapped_owners, out, batch)
    assert float(perfect["bce"]) < 0.05 and float(perfect["dice"]) < 0.05
    assert float(swapped["bce"]) > 10 * float(perfect["bce"])


def test_semantic_target_draws_smaller_instances_on_top() -> None:
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    masks[0, 0] = True  # large, class 3
    masks[1, 0, 2:4, 2:4] = True  # small, class 1
    pad = torch.ones(8, 8, dtype=torch.bool)
    pad[:, 6:] = False
    target = semantic_target_from_instances(masks, torch.tensor([3, 1]), pad, (8, 8))
    assert int(target[0, 2, 2]) == 2 and int(target[0, 0, 0]) == 4 and int(target[0, 0, 7]) == 255


@pytest.fixture(scope="module")
def multi_cfg(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    os.environ["VIDSEG_CACHE"] = str(cache)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=["task=multi", f"paths.cache_dir={cache}", "paths.output_dir=/tmp/x"])


@pytest.mark.slow
def test_hot_swap_one_checkpoint_validates_vis_and_vos(multi_cfg, tmp_path: Path) -> None:
    torch.manual_seed(0)
    dm = build_datamodule(multi_cfg, list(multi_cfg.tasks))
    dm.prepare_data()
    module = build_module(multi_cfg, dm).eval()
    ckpt = tmp_path / "model.pt"
    torch.save(module.state_dict(), ckpt)
    torch.manual_seed(1)  # a fresh module has other random weights until the checkpoint is loaded
    fresh = build_module(multi_cfg, dm).eval()
    fresh.load_state_dict(torch.load(ckpt, weights_only=True), strict=True)
    for dataset, task in (("syn_ytvis", "vis"), ("syn_davis", "vos")):
        video = EvalVideoDataset(dataset, dm.val_records[dataset], 64, 64)[0]
        record = dm.val_records[dataset].videos[0]
        a = module.tasks[task].predict_video(module.model, video, record, dataset)
        b = fresh.tasks[task].predict_video(fresh.model, video, record, dataset)
        assert [(t.track_id, t.category_id, round(t.score, 5), t.masks) for t in a.tracks] == \
            [(t.track_id, t.category_id, round(t.score, 5), t.masks) for t in b.tracks]
        metric = fresh.tasks[task].make_metric(dm.val_records[dataset])
        metric.update(b, record)
        values = metric.compute()
        key = "AP" if task == "vis" else "J&F-Mean"
        assert 0.0 <= float(values[key]) <= 1.0


def test_vos_pads_clips_with_fewer_objects_and_ignores_the_padding() -> None:
    """A batch of a 1-object and a 2-object clip keeps both objects of the second clip (no clip's objects are cut
    to the batch minimum or turned into background); the padded object of the first clip has no loss."""
    task = VOSTask(background_grid=1, num_points=None)
    t, h, w = 2, 8, 8
    two = torch.zeros(2, t, h, w, dtype=torch.bool)
    two[0, :, :4] = True
    two[1, :, 4:, :4] = True
    one = two[:1].clone()
    vos = torch.full((2, 4, t, h, w), -10.0)  # 2 sub-queries per object, owners [0, 0, 1, 1]
    vos[0, 0][one[0]] = 10.0
    vos[1, 0][two[0]] = 10.0
    vos[1, 2][two[1]] = 10.0
    bg = torch.stack([torch.where(m.any(0), -10.0, 10.0) for m in (one, two)])[:, None]
    out = _fake_output({"background_vos": bg, "vos": vos})
    qs = out.query_set
    qs.owners, qs.num_objects = [0, 0, 1, 1], 2
    qs.object_valid = torch.tensor([[True, False], [True, True]])
    batch = Batch("vos", "d", torch.zeros(2, t, 3, h, w, dtype=torch.uint8), torch.ones(2, h, w, dtype=torch.bool),
                  [_sample(one), _sample(two)])
    perfect = task.loss(None, None, qs, out, batch)
    assert float(perfect["bce"]) < 0.05 and float(perfect["dice"]) < 0.05
    vos[0, 2:] = 10.0  # the padded object of clip 0 claims the whole clip: ignored
    assert torch.allclose(task.loss(None, None, qs, _fake_output({"background_vos": bg, "vos": vos}), batch)["bce"],
                          perfect["bce"])
    vos[1, 2:] = -10.0  # clip 1's second object missed: it is a real target
    missed = task.loss(None, None, qs, _fake_output({"background_vos": bg, "vos": vos}), batch)
    assert float(missed["dice"]) > 0.5


@pytest.mark.parametrize("point_prob", [0.0, 1.0])
def test_vos_init_queries_pad_clips_to_the_largest_object_count(point_prob: float) -> None:
    """Real tiny model: a 1-object and a 3-object clip give 3 objects' queries for both clips, the padding is marked
    in `object_valid`, and the loss over the decoder output is finite with gradients into the model."""
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["task=vos"])
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    task = VOSTask(queries_per_object=2, background_grid=2, encoder_layers=1, encoder_ffn=32, encoder_heads=4,
                   pixels_per_query=16, point_prob=point_prob, num_points=None)
    task.setup(model, {})
    t, size = 2, 64
    samples = []
    for n in (1, 3):
        masks = torch.zeros(n, t, size, size, dtype=torch.bool)
        for k in range(n):
            masks[k, :, 8 + 16 * k : 20 + 16 * k, 10:30] = True
        points = torch.tensor([[20.0, 14.0 + 16 * k] for k in range(n)])
        samples.append(ClipSample(frames=torch.randint(0, 255, (t, 3, size, size), dtype=torch.uint8), masks=masks,
                                  track_ids=torch.arange(1, n + 1), class_ids=torch.full((n,), -1),
                                  pad_mask=torch.ones(size, size, dtype=torch.bool), points=points,
                                  prompt_frames=torch.zeros(n, dtype=torch.long), dataset="d"))
    batch = Batch("vos", "d", torch.stack([s.frames for s in samples]), torch.ones(2, size, size, dtype=torch.bool),
                  samples)
    feats = model.encode(batch.frames)
    qs = task.init_queries(model, feats, batch)
    assert qs.num_objects == 3
    assert qs.object_valid.tolist() == [[True, False, False], [True, True, True]]
    out = model.decode(feats, qs)
    side = size // model.mask_stride  # task=vos composes the tiny VOS recipe (stride-2 masks)
    assert task.object_logits(out, -1, qs.owners, 3).shape == (2, 4, t, side, side)
    losses = task.loss(model, feats, qs, out, batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.neck.mask_features.weight.grad.abs().sum() > 0


def test_vos_token_pool_cuts_prompt_tokens_from_pooled_features() -> None:
    """token_pool=2: an object's tokens are the 2x2-average-pooled mask features of every pooled cell its mask
    touches (stride-2 masks keep the encoder at the stride-4 token count); 1 keeps the features themselves."""
    from types import SimpleNamespace

    d, h, w = 4, 8, 8
    mf = torch.randn(1, 1, d, h, w)
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[0, 0:2, 0:2] = True  # pooled cell (0, 0)
    mask[0, 5, 6] = True  # one pixel of pooled cell (2, 3)
    seen = {}

    def encoder(init, tokens, pos, pads, kinds):
        seen.update(init=init, tokens=tokens, pads=pads, kinds=kinds)
        return torch.zeros(init.shape[0], init.shape[1], d)

    for pool in (1, 2):
        task = VOSTask(queries_per_object=1, background_grid=1, pixels_per_query=64, token_pool=pool)
        task.encoder, task.point_init = encoder, object()
        task.embeds = {"background_vos": QueryGroupFactory(), "vos": QueryGroupFactory()}
        task.build_queries(SimpleNamespace(mask_features=mf, features=[]), [mask], [torch.zeros(1, dtype=torch.long)],
                           [None], [False], 1, 64)
        obj = seen["tokens"][0, 1][~seen["pads"][0, 1]]  # the object's query (after 1 background query)
        pooled = torch.nn.functional.avg_pool2d(mf[0], pool)[0] if pool > 1 else mf[0, 0]
        expect = pooled[:, [0, 2], [0, 3]].t() if pool > 1 else mf[0, 0][:, mask[0]].t()
        torch.testing.assert_close(obj, expect)
        torch.testing.assert_close(seen["init"][0, 1], expect.mean(0))
    with pytest.raises(ValueError, match="token_pool"):
        VOSTask(token_pool=0)


class QueryGroupFactory:
    """Stand-in for LearnedQueries: .group(name, content) -> a QueryGroup holding the content."""

    def group(self, name: str, content: torch.Tensor) -> QueryGroup:
        return QueryGroup(name, content[0], torch.zeros(content.shape[-1]))


def test_pet_prompts_every_object_with_a_point_unless_its_training_mix_says_otherwise() -> None:
    """PET's default is all points; `point_prob` < 1 prompts the rest of the training objects with their masks
    (the same per-step draw as VOS), never at inference; 0 or above 1 is refused, naming the option."""
    from vidseg.tasks.pet import PETTask

    assert all(PETTask().point_objects(step, 6) == [True] * 6 for step in range(5))
    mixed = PETTask(point_prob=0.5)
    draws = [x for step in range(40) for x in mixed.point_objects(step, 6)]
    assert 0.3 < sum(draws) / len(draws) < 0.7
    assert mixed.point_objects(7, 6) == mixed.point_objects(7, 6)
    assert mixed.eval_point_objects([object()] * 3) == [True] * 3
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="tasks.pet.point_prob"):
            PETTask(point_prob=bad)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="tasks.vos.point_prob"):
            VOSTask(point_prob=bad)
