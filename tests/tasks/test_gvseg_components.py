"""GvSeg query initialisers, contrastive pairs/queues/losses and the config (split from test_gvseg.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vidseg.data.records import IGNORE_LABEL
from vidseg.tasks.gvseg import (
    ClassQueue,
    GridQueryInit,
    GvSegConfig,
    PromptFeatureInit,
    PrototypeBank,
    class_pairs,
    contrastive_loss,
    contrastive_pairs,
    instance_contrastive_loss,
    panoptic_queries,
    semantic_contrastive_loss,
)

U, V, M = 36, 12, 200
OUT = -1.0 / 16.0  # −1/√256
S = 96  # image side; diagonal 96·√2 = 135.76, so one radius bin is 135.76 / 12 = 11.31 px wide



# ---------------------------------------------------------------------------------------------- query init
def test_grid_query_init_cells_and_values() -> None:
    s, n, d = 4, 5, 3
    # frame-constant features whose 4×4-cell average is the cell index in every channel (cells of 2×2 pixels)
    cell_id = torch.arange(s * s, dtype=torch.float32).view(s, s).repeat_interleave(2, 0).repeat_interleave(2, 1)
    feats = cell_id.expand(2, 3, d, 8, 8).clone()
    init = GridQueryInit(d, grid=s, num_queries=n)
    with torch.no_grad():
        init.proj.weight.copy_(torch.eye(d))
        init.proj.bias.zero_()
        init.cell_embed.weight.zero_()
    out = init(feats, generator=torch.Generator().manual_seed(0))
    cells = init.last_cells
    assert out.shape == (2, n, d) and cells.shape == (2, n)
    assert all(len(set(row)) == n for row in cells.tolist())
    assert torch.allclose(out, cells.float()[..., None].expand(-1, -1, d))
    other = init(feats, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(init.last_cells, cells) and other.shape == out.shape
    init.eval()
    init(feats)
    assert torch.equal(init.last_cells, torch.tensor([[0, 4, 8, 11, 15]] * 2))  # linspace(0, 15, 5) rounded
    with pytest.raises(ValueError, match="exceeds"):
        GridQueryInit(d, grid=2, num_queries=5)


def test_prototype_bank_ema_semantics() -> None:
    d, c = 2, 4
    bank = PrototypeBank(c, d, momentum=0.9, copy_first=False)
    before = bank.prototypes.clone()
    feats = torch.zeros(1, 2, d, 2, 2)
    feats[0, 0, :, 0, 0] = torch.tensor([1.0, 2.0])  # class 0
    feats[0, 1, :, 0, 0] = torch.tensor([3.0, 4.0])  # class 0 → mean (2, 3)
    feats[0, 0, :, 1, 1] = torch.tensor([10.0, -10.0])  # class 2
    feats[0, 1, :, 1, 1] = torch.tensor([99.0, 99.0])  # ignored pixel
    sem = torch.full((1, 2, 4, 4), IGNORE_LABEL)  # nearest resize 4×4 → 2×2 takes the even rows/cols
    sem[0, 0, 0, 0] = sem[0, 1, 0, 0] = 0
    sem[0, 0, 2, 2] = 2
    present = bank.update(feats, sem)
    assert present.tolist() == [True, False, True, False]
    assert torch.allclose(bank.prototypes[0], 0.9 * before[0] + 0.1 * torch.tensor([2.0, 3.0]))
    assert torch.allclose(bank.prototypes[2], 0.9 * before[2] + 0.1 * torch.tensor([10.0, -10.0]))
    assert torch.equal(bank.prototypes[[1, 3]], before[[1, 3]])  # absent classes untouched
    assert torch.allclose(bank(), bank.prototypes)  # identity projection at start
    first = PrototypeBank(c, d, momentum=0.9, copy_first=True)
    first.update(feats, sem)
    assert torch.allclose(first.prototypes[0], torch.tensor([2.0, 3.0]))  # first sight copies
    first.update(feats * 2, sem)
    assert torch.allclose(first.prototypes[0], 0.9 * torch.tensor([2.0, 3.0]) + 0.1 * torch.tensor([4.0, 6.0]))
    with pytest.raises(ValueError, match="momentum"):
        PrototypeBank(c, d, momentum=1.0)
    grid = GridQueryInit(d, grid=2, num_queries=3)
    things, stuff = panoptic_queries(grid, first, feats, torch.tensor([0, 3]))
    assert things.shape == (1, 3, d) and torch.allclose(stuff, first()[[0, 3]])


def test_prompt_feature_init_masks_and_points() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 4, 8, 8, generator=g)
    init = PromptFeatureInit(4)
    with torch.no_grad():
        init.proj.weight.copy_(torch.eye(4))
        init.proj.bias.zero_()
    masks = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    masks[0, 0, 0:4, 0:4] = True  # → feature cells (0..1, 0..1)
    masks[1, 0, 8:10, 12:16] = True  # → cells (4, 6..7)
    frames = torch.tensor([[2], [1]])
    out = init.from_masks(feats, masks, frames)
    assert torch.allclose(out[0, 0], feats[0, 2, :, 0:2, 0:2].mean((-1, -2)), atol=1e-6)
    assert torch.allclose(out[1, 0], feats[1, 1, :, 4, 6:8].mean(-1), atol=1e-6)
    points = torch.tensor([[[(3 + 0.5) / 8, (5 + 0.5) / 8]], [[0.5 / 8, 7.5 / 8]]])  # pixel centres (x, y)
    pts = init.from_points(feats, points, frames)
    assert torch.allclose(pts[0, 0], feats[0, 2, :, 5, 3], atol=1e-6)
    assert torch.allclose(pts[1, 0], feats[1, 1, :, 7, 0], atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        init.from_masks(feats, torch.zeros_like(masks), frames)
    with pytest.raises(ValueError, match="frames"):
        init.from_points(feats, points, torch.tensor([[3], [0]]))


# ---------------------------------------------------------------------------------------------- contrastive
def test_contrastive_pairs_follow_tau() -> None:
    h_ref = torch.zeros(3, 6)
    h_ref[:, 0] = 1.0  # ‖H_t‖ = 1, so ΔH = size of the change
    h_other = h_ref.clone()
    h_other[0, 1] = 0.199  # id 7: ΔH just below τ → positive
    h_other[1, 1] = 0.201  # id 8: ΔH just above τ → negative
    ids_ref, ids_other = torch.tensor([7, 8, -1]), torch.tensor([7, 8, -1])
    pos, neg = contrastive_pairs(h_ref, h_other, ids_ref, ids_other, tau=0.2)
    assert pos.tolist() == [[True, False, False], [False, False, False], [False, False, False]]
    assert torch.equal(neg, ~pos)  # other identities, large changes and id −1 are negatives
    pos2, neg2 = contrastive_pairs(h_ref, h_other, ids_ref, ids_other, tau=0.25)
    assert pos2[1, 1] and not neg2[1, 1]
    pos3, neg3 = contrastive_pairs(h_ref, h_other, ids_ref, ids_other, tau=0.2,
                                   valid_other=torch.tensor([False, True, True]))
    assert not pos3[:, 0].any() and not neg3[:, 0].any() and torch.equal(neg3[:, 1:], neg[:, 1:])
    with pytest.raises(ValueError, match="tau"):
        contrastive_pairs(h_ref, h_other, ids_ref, ids_other, tau=0.0)


def test_class_queue_fifo_and_capacity() -> None:
    q = ClassQueue(num_classes=3, d_model=1, size=3)
    q.push(torch.tensor([[1.0], [2.0], [10.0]]), torch.tensor([0, 0, 1]))
    assert q.get(0).flatten().tolist() == [1.0, 2.0] and q.get(1).flatten().tolist() == [10.0]
    assert q.get(2).shape == (0, 1)
    q.push(torch.tensor([[3.0], [4.0]]), torch.tensor([0, 0]))  # class 0 overflows: 1 is dropped
    assert q.get(0).flatten().tolist() == [2.0, 3.0, 4.0]
    q.push(torch.tensor([[5.0], [11.0], [6.0], [7.0], [8.0]]), torch.tensor([0, 1, 0, 0, 0]))  # 4 > size in one push
    assert q.get(0).flatten().tolist() == [6.0, 7.0, 8.0] and q.get(1).flatten().tolist() == [10.0, 11.0]
    emb, cls = q.all()
    assert sorted(zip(cls.tolist(), emb.flatten().tolist())) == [(0, 6.0), (0, 7.0), (0, 8.0), (1, 10.0), (1, 11.0)]
    assert q.count.tolist() == [3, 2, 0]
    with pytest.raises(ValueError, match="outside"):
        q.push(torch.zeros(1, 1), torch.tensor([3]))
    pos, neg = class_pairs(torch.tensor([0, 1]), cls)
    assert pos.tolist() == [[True] * 3 + [False] * 2, [False] * 3 + [True] * 2] and torch.equal(neg, ~pos)


def _reference_losses(a: torch.Tensor, b: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, temp: float):
    sim = (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temp).tolist()
    infonce, idol = [], []
    for i, row in enumerate(sim):
        ps = [row[j] for j in range(len(row)) if pos[i, j]]
        ns = [row[j] for j in range(len(row)) if neg[i, j]]
        if not ps:
            continue
        infonce.append(sum(-math.log(math.exp(p) / (math.exp(p) + sum(math.exp(x) for x in ns))) for p in ps) / len(ps))
        idol.append(math.log(1 + sum(math.exp(x - p) for p in ps for x in ns)))
    return sum(infonce) / len(infonce), sum(idol) / len(idol)


def test_contrastive_loss_forms_match_reference() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, generator=g, requires_grad=True), torch.randn(5, 8, generator=g)
    pos = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    neg = ~pos
    neg[1] = False  # anchor 1: a positive and no negative
    ref_infonce, ref_idol = _reference_losses(a.detach(), b, pos, neg, 0.5)
    got = contrastive_loss(a, b, pos, neg, temperature=0.5, form="infonce")
    assert got.item() == pytest.approx(ref_infonce, rel=1e-5)
    assert contrastive_loss(a, b, pos, neg, 0.5, form="idol").item() == pytest.approx(ref_idol, rel=1e-5)
    assert contrastive_loss(a, b, pos, neg, 0.5, weight=3.0).item() == pytest.approx(3 * ref_infonce, rel=1e-5)
    got.backward()
    assert torch.isfinite(a.grad).all() and a.grad[2].abs().sum() == 0  # anchor 2 has no positive
    none = contrastive_loss(a, b, torch.zeros_like(pos), neg, 0.5)
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="both positive and negative"):
        contrastive_loss(a, b, pos, ~neg | pos, 0.5)
    with pytest.raises(ValueError, match="form"):
        contrastive_loss(a, b, pos, neg, 0.5, form="triplet")  # type: ignore[arg-type]


def test_instance_and_semantic_contrastive_helpers() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    h_ref = torch.eye(3, 5) + 1.0
    h_other = h_ref.clone()
    h_other[2] += 1.0  # identity 2 changed a lot → negative
    ids = torch.tensor([0, 1, 2])
    pos, neg = contrastive_pairs(h_ref, h_other, ids, ids, 0.2)
    assert pos.diagonal().tolist() == [True, True, False]
    got = instance_contrastive_loss(a, b, ids, ids, h_ref, h_other, tau=0.2, temperature=0.5, form="idol")
    assert torch.allclose(got, contrastive_loss(a, b, pos, neg, 0.5, form="idol"))
    queue = ClassQueue(3, 8, size=4)
    first = semantic_contrastive_loss(a, torch.tensor([0, 1, 1]), queue, temperature=0.5)
    assert first.item() == 0.0 and queue.count.tolist() == [1, 2, 0]  # empty queue: no loss, then pushed
    bank, bank_cls = queue.all()
    qpos, qneg = class_pairs(torch.tensor([1, 0, 2]), bank_cls)
    expected = contrastive_loss(b, bank, qpos, qneg, 0.5)
    got = semantic_contrastive_loss(b, torch.tensor([1, 0, 2]), queue, temperature=0.5)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6) and got.item() > 0
    assert queue.count.tolist() == [2, 3, 1] and torch.equal(queue.get(2), b[2:3])


# ---------------------------------------------------------------------------------------------- config
def test_config_defaults_and_validation() -> None:
    cfg = GvSegConfig()
    assert (cfg.spa, cfg.task_init, cfg.contrastive) == (False, False, False)
    assert (cfg.angle_bins, cfg.radius_bins, cfg.num_points, cfg.tau, cfg.queue_size) == (36, 12, 200, 0.2, 100)
    built = GvSegConfig.from_any({"spa": True, "tau": 0.3, "loss_form": "idol"})
    assert built.spa and built.tau == 0.3 and not built.contrastive
    assert GvSegConfig.from_any(None) == cfg and GvSegConfig.from_any(built) is built
    from omegaconf import OmegaConf  # Hydra passes nested nodes as DictConfig

    assert GvSegConfig.from_any(OmegaConf.create({"spa": True, "tau": 0.3, "loss_form": "idol"})) == built
    with pytest.raises(ValueError, match="unknown keys"):
        GvSegConfig.from_any({"spaa": True})
    with pytest.raises(ValueError, match="tau"):
        GvSegConfig(tau=0)
    with pytest.raises(ValueError, match="momentum"):
        GvSegConfig(momentum=1.5)
    with pytest.raises(ValueError, match="loss_form"):
        GvSegConfig(loss_form="hinge")
    assert cfg.association_threshold == 0.5
    with pytest.raises(ValueError, match="association_threshold"):
        GvSegConfig(association_threshold=1.0)
    enc = GvSegConfig(angle_bins=10, radius_bins=4, num_points=50).encoder(16)
    assert (enc.angle_bins, enc.radius_bins, enc.num_points, enc.descriptor_dim) == (10, 4, 50, 42)
