"""Print parameter counts of the TarViS model configs, per part (backbone / neck / decoder / total).

    python scripts/param_count.py                     # tarvis_r50, tarvis_swin_t, tarvis_swin_l
    python scripts/param_count.py tarvis_tiny --vocab 40

Models are built on the meta device (no memory, no weights). The decoder count includes one set of mask
heads per query group passed with --groups; semantic queries add ``--vocab`` × d_model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def count(config: str, groups: list[str], vocab: int) -> dict[str, int]:
    """Parameter counts of ``conf/model/<config>.yaml`` with the given head groups and vocabulary size."""
    cfg = OmegaConf.load(CONF / f"{config}.yaml")
    with torch.device("meta"):
        model = instantiate(cfg, groups=groups, vocabularies={"vocab": vocab} if vocab else None)
    return model.num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=["tarvis_r50", "tarvis_swin_t", "tarvis_swin_l"])
    parser.add_argument("--groups", nargs="*", default=["instance", "background"],
                        help="query groups whose mask heads are counted (semantic is added with --vocab)")
    parser.add_argument("--vocab", type=int, default=0, help="semantic classes to count (0 = none)")
    args = parser.parse_args()
    print(f"{'config':16s} {'backbone':>10s} {'neck':>10s} {'decoder':>10s} {'semantic':>9s} {'total':>10s}")
    for name in args.configs:
        c = count(name, args.groups, args.vocab)
        print(f"{name:16s} {c['backbone'] / 1e6:9.2f}M {c['neck'] / 1e6:9.2f}M {c['decoder'] / 1e6:9.2f}M "
              f"{c['semantic_bank'] / 1e6:8.3f}M {c['total'] / 1e6:9.2f}M")


if __name__ == "__main__":
    main()
