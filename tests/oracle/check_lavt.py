"""Oracle: the official LAVT forward (S+S+C's ``lavt_lib`` and vendored BERT) against sssc's
LAVT loaded from the same official-layout checkpoint (README, under the deviation table).

    SSC_REPO=/path/to/segment-select-correct .venv/bin/python tests/oracle/check_lavt.py \
        [--stage3-depth 18] [--sizes 480,320,200,96,480x360] [--float32]

Random values in every tensor (BatchNorm statistics too), lavt-base's Swin widths and window,
a 2-layer BERT of width 768 (LAVT's fusion reads 768 channels). Eval mode, float64 by default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODEL_YAML = """name: oracle
image_size: 480
max_tokens: 20
tokenizer: words
swin: {{embed_dim: 128, depths: {depths}, num_heads: [4, 8, 16, 32], window_size: 12,
        patch_size: 4, mlp_ratio: 4.0, drop_path_rate: 0.3}}
bert: {{vocab_size: 40, hidden_size: 768, num_hidden_layers: 2, num_attention_heads: 12,
        intermediate_size: 512, max_position_embeddings: 64, hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1}}
pwam: {{num_heads: 1, dropout: 0.0}}
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage3-depth", type=int, default=2)
    ap.add_argument("--sizes", default="480,320,200,96,480x360")
    ap.add_argument("--float32", action="store_true")
    args = ap.parse_args()
    from official import load, scratch

    load()
    from ssc_ris.refer_dataset.bert.configuration_bert import BertConfig
    from ssc_ris.refer_dataset.bert.modeling_bert import BertModel
    from ssc_ris.utils.lavt_lib._utils import LAVT
    from ssc_ris.utils.lavt_lib.backbone import MultiModalSwinTransformer
    from ssc_ris.utils.lavt_lib.mask_predictor import SimpleDecoding

    from sssc.correct.lavt import create_model

    torch.manual_seed(0)
    depths = [2, 2, args.stage3_depth, 2]
    backbone = MultiModalSwinTransformer(
        embed_dim=128, depths=depths, num_heads=[4, 8, 16, 32], window_size=12, ape=False,
        drop_path_rate=0.3, patch_norm=True, out_indices=(0, 1, 2, 3), use_checkpoint=False,
        num_heads_fusion=[1, 1, 1, 1], fusion_drop=0.0,
    )  # fmt: skip
    backbone.init_weights()
    official = LAVT(backbone, SimpleDecoding(8 * 128))
    bert = BertModel(
        BertConfig(
            vocab_size=40, hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
            intermediate_size=512, max_position_embeddings=64,
        )
    )  # fmt: skip
    bert.pooler = None  # as LAVT's train and test scripts set it
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in (official, bert):
            for name, t in module.state_dict().items():
                if not t.dtype.is_floating_point:
                    continue
                if "running_var" in name:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * (0.05 if t.dim() > 1 else 0.5))
    official.eval()
    bert.eval()
    tmp = scratch("sssc-oracle-lavt-")
    torch.save({"model": official.state_dict(), "bert_model": bert.state_dict()}, tmp / "o.pth")
    (tmp / "model.yaml").write_text(MODEL_YAML.format(depths=depths))
    ours = create_model(tmp / "model.yaml", weights=tmp / "o.pth").eval()
    dtype = torch.float32 if args.float32 else torch.float64
    for m in (official, bert, ours):
        m.to(dtype)
    worst = 0.0
    for spec in args.sizes.split(","):
        h, w = (int(v) for v in spec.split("x")) if "x" in spec else (int(spec),) * 2
        image = torch.randn(2, 3, h, w, generator=g).to(dtype)
        ids = torch.randint(5, 40, (2, 20), generator=g)
        mask = torch.ones(2, 20, dtype=torch.int64)
        mask[0, 12:], mask[1, 7:] = 0, 0
        ids = ids * mask
        ids[:, 0] = 2
        with torch.no_grad():
            words = bert(ids, attention_mask=mask)[0].permute(0, 2, 1)
            want = official(image, words, l_mask=mask.unsqueeze(-1))
            got = ours(image, ids, mask)
        diff = (got - want).abs().max().item()
        worst = max(worst, diff / want.abs().max().item())
        same = (got.argmax(1) == want.argmax(1)).double().mean().item()
        print(
            f"stage depths {depths}, {h}x{w}: max |logit difference| {diff:.3g} "
            f"(largest |logit| {want.abs().max().item():.3g}), argmax agreeing {same:.6f}"
        )
    limit = 1e-3 if args.float32 else 1e-9
    return int(worst > limit)


if __name__ == "__main__":
    sys.exit(main())
