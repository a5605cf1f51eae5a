"""Per-object IoU of a VOS checkpoint on TRAINING clips, through the training path, for every decoder prediction
(by hand: the diagnostic behind README "Learning"; eval mode, no gradient).

Unlike J&F on the val split (where frames with an absent object score 1 when nothing is predicted), this measures
only frames where the object is visible, so it separates a model that segments prompted objects from one that
predicts nothing. Labels = argmax over [background, objects] of the upsampled object logits.

    python scripts/vos_train_iou.py RUN/checkpoints/last.ckpt [--batches 10] [-x tasks.vos.weights.prototype=2.0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from vidseg.utils.run import build_datamodule, build_module

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("-x", "--extra", action="append", default=[], metavar="OVERRIDE",
                        help="Hydra override of the run (e.g. the options the checkpoint was trained with)")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["task=vos", "run_name=x", "paths.output_dir=/tmp", *args.extra])
    dm = build_datamodule(cfg, ["vos"])
    dm.prepare_data()
    module = build_module(cfg, dm)
    state = torch.load(args.ckpt, map_location="cpu", weights_only=True)["state_dict"]
    missing = module.load_state_dict(state, strict=False).missing_keys
    if missing:
        raise SystemExit(f"{args.ckpt}: checkpoint lacks {len(missing)} parameters, e.g. {missing[:3]}")
    module.eval()
    task = module.tasks["vos"]
    ious: dict[tuple[int, int], list[float]] = {}
    with torch.no_grad():
        for _, loaded in zip(range(args.batches), dm.train_dataloader()):
            batch = loaded.to("cpu")  # crops resized as on the device (data.resize_on_device)
            feats = module.model.encode(batch.frames)
            queries = task.init_queries(module.model, feats, batch)
            out = module.model.decode(feats, queries, getattr(queries, "query_adders", None))
            n = queries.num_objects
            for layer in range(out.num_predictions):
                logits = task.object_logits(out, layer, queries.owners, n)  # [B, 1+N, T, h, w]
                up = F.interpolate(logits.flatten(1, 2), size=batch.frames.shape[-2:], mode="bilinear")
                labels = up.unflatten(1, (1 + n, -1)).argmax(1)  # [B, T, H, W]
                for b, sample in enumerate(batch.samples):
                    for k in range(n):
                        for t in range(sample.masks.shape[1]):
                            gt = sample.masks[k, t]
                            if gt.any():
                                pred = labels[b, t] == k + 1
                                ious.setdefault((layer, t), []).append(float((gt & pred).sum() / (gt | pred).sum()))
    print("mean per-object IoU on training clips, by (decoder prediction, clip frame):")
    for (layer, t), values in sorted(ious.items()):
        print(f"  prediction {layer} frame {t}: {np.mean(values):.3f} ({len(values)} objects)")


if __name__ == "__main__":
    main()
