"""bf16 training throughput and model FLOPs utilisation (MFU) on one GPU, per model at base size.

Imports only torch-level code (``components.models``, ``components.losses``),
so it runs wherever PyTorch runs. Each model is measured side by side with a
reference of the same shape built from torch's own ``nn.TransformerEncoder``
layers. Models: CLIP ViT-B/16 (contrastive loss), BERT-base (masked-LM
loss at 20 masked positions of 128, as in BERT's phase-1 pretraining, plus
next-sentence loss), the ViT-B/16 and ViT-L/16 image classifiers (224
pixels, 1000 classes, cross-entropy), and DETR-R50 (800×1088 canvases,
half the images 800×800 and padded, 8 boxes each, Hungarian matching and the
set loss with auxiliary layers; batch 16 unless ``--batch`` says otherwise;
its reference is DETR's own layout from ``nn.MultiheadAttention``, and its
FLOPs are counted by ``torch.utils.flop_counter`` on the meta device, since
the frozen stem and first stage have no backward). Without a GPU it says so
and exits cleanly; ``--device cpu --size tiny`` smoke-tests the script
itself. One RESULT line per model, in the order measured.

Run: ``python benchmarks/gpu_mfu.py [--model clip|bert|vit-b16|vit-l16|detr-r50|all] [--batch 128] [--steps 30]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.losses.contrastive import clip_loss  # noqa: E402
from components.losses.detection import DetectionLoss  # noqa: E402
from components.models.bert import BertConfig, BertForPreTraining, bert_config  # noqa: E402
from components.models.clip import CLIP, CLIPConfig, TextConfig  # noqa: E402
from components.models.detr import DETR, DetrConfig, detr_config  # noqa: E402
from components.models.detr_backbone import build_backbone  # noqa: E402
from components.models.position_encoding import PositionEmbeddingSine  # noqa: E402
from components.models.vit import ViTConfig, VisionTransformer, vit_config  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}

CLIP_SIZES = {
    # CLIP ViT-B/16: the image and text towers of the original paper.
    "base": CLIPConfig(embed_dim=512, vision=ViTConfig(224, 16, 768, 12, 12), text=TextConfig(49408, 77, 512, 12, 8)),
    "tiny": CLIPConfig(embed_dim=32, vision=ViTConfig(32, 8, 64, 2, 2), text=TextConfig(512, 16, 64, 2, 2)),
}

# BERT: (config, sequence length, masked positions per sequence), as in BERT's phase-1 pretraining.
BERT_SIZES = {
    "base": (BertConfig(), 128, 20),
    "tiny": (bert_config("tiny", vocab_size=512, max_position=32), 32, 5),
}


class ReferenceTower(nn.Module):
    """A pre-norm tower from torch's own TransformerEncoder: the same shapes as tvp's blocks."""

    def __init__(self, width: int, layers: int, heads: int, eps: float = 1e-5):
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           layer_norm_eps=eps, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(self.encoder(x, mask=mask, is_causal=mask is not None))


class ReferenceCLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        v, t = cfg.vision, cfg.text
        self.patch = nn.Conv2d(3, v.width, v.patch_size, v.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, v.width))
        self.vpos = nn.Parameter(torch.zeros(1, (v.image_size // v.patch_size) ** 2 + 1, v.width))
        self.visual = ReferenceTower(v.width, v.layers, v.heads)
        self.tok = nn.Embedding(t.vocab_size, t.width)
        self.tpos = nn.Parameter(torch.zeros(1, t.context_length, t.width))
        self.text = ReferenceTower(t.width, t.layers, t.heads)
        self.vproj = nn.Linear(v.width, cfg.embed_dim, bias=False)
        self.tproj = nn.Linear(t.width, cfg.embed_dim, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(t.context_length), persistent=False)

    def forward(self, images, tokens):
        x = self.patch(images).flatten(2).transpose(1, 2)
        x = self.visual(torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.vpos)[:, 0]
        y = self.text(self.tok(tokens) + self.tpos, self.mask)
        y = y[torch.arange(len(y), device=y.device), (tokens != 0).sum(1) - 1]
        return F.normalize(self.vproj(x), dim=-1), F.normalize(self.tproj(y), dim=-1), torch.tensor(14.3, device=x.device)


def tower_flops(tokens: int, width: int, layers: int) -> float:
    """Forward FLOPs of one sequence: QKV/out/MLP matmuls (24·T·d²) plus attention scores and mixing (4·T²·d)."""
    return layers * (24 * tokens * width**2 + 4 * tokens**2 * width)


def clip_train_flops(cfg: CLIPConfig, batch: int) -> float:
    v, t = cfg.vision, cfg.text
    patches = (v.image_size // v.patch_size) ** 2
    forward = (tower_flops(patches + 1, v.width, v.layers) + 2 * patches * 3 * v.patch_size**2 * v.width
               + tower_flops(t.context_length, t.width, t.layers))
    return 3 * forward * batch  # backward costs about twice the forward


class ReferenceBert(nn.Module):
    """BERT from torch's own post-norm TransformerEncoder: the same shapes, embeddings and tied MLM head as tvp's."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        h = cfg.hidden_size
        self.word = nn.Embedding(cfg.vocab_size, h)
        self.pos = nn.Parameter(torch.zeros(1, cfg.max_position, h))
        self.segment = nn.Embedding(cfg.type_vocab_size, h)
        self.ln = nn.LayerNorm(h, eps=cfg.eps)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(h, cfg.heads, cfg.intermediate_size, dropout=cfg.dropout, activation="gelu",
                                           layer_norm_eps=cfg.eps, batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.pooler = nn.Linear(h, h)
        self.dense = nn.Linear(h, h)
        self.mlm_ln = nn.LayerNorm(h, eps=cfg.eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.nsp = nn.Linear(h, 2)

    def forward(self, ids, segments, masked_positions):
        x = self.dropout(self.ln(self.word(ids) + self.pos[:, : ids.shape[1]] + self.segment(segments)))
        x = self.encoder(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        h = x.reshape(-1, x.shape[-1])[masked_positions]
        return F.linear(self.mlm_ln(F.gelu(self.dense(h))), self.word.weight, self.bias), self.nsp(pooled)


def bert_train_flops(cfg: BertConfig, length: int, masked: int) -> float:
    """Per sequence: the encoder, the MLM transform and vocabulary projection at the masked positions, 3x forward."""
    h = cfg.hidden_size
    forward = tower_flops(length, h, cfg.layers) + masked * (2 * h * h + 2 * h * cfg.vocab_size)
    return 3 * forward


def clip_workload(size: str, batch: int, device: torch.device):
    """(tvp model, reference model, loss(model) on a fixed batch, training FLOPs per sample)."""
    cfg = CLIP_SIZES[size]
    images = torch.randn(batch, 3, cfg.vision.image_size, cfg.vision.image_size, device=device)
    tokens = torch.randint(3, cfg.text.vocab_size, (batch, cfg.text.context_length), device=device)

    def loss(model):
        return clip_loss(*model(images, tokens))

    return (lambda: CLIP(cfg)), (lambda: ReferenceCLIP(cfg)), loss, clip_train_flops(cfg, 1)


def bert_workload(size: str, batch: int, device: torch.device):
    """Full-length sequences in two segments; masked-LM loss at ``masked`` random positions per row, plus NSP."""
    cfg, length, masked = BERT_SIZES[size]
    ids = torch.randint(5, cfg.vocab_size, (batch, length), device=device)
    segments = (torch.arange(length, device=device) >= length // 2).long().expand(batch, -1)
    rows = torch.rand(batch, length, device=device).argsort(dim=1)[:, :masked].sort(dim=1).values
    positions = (rows + length * torch.arange(batch, device=device)[:, None]).reshape(-1)  # flat into B·L
    labels = ids.reshape(-1)[positions]
    nsp_labels = torch.randint(0, 2, (batch,), device=device)

    def loss(model):
        if isinstance(model, ReferenceBert):
            mlm, nsp = model(ids, segments, positions)
        else:
            out = model(ids, segments, masked_positions=positions)
            mlm, nsp = out.mlm_logits, out.nsp_logits
        return F.cross_entropy(mlm.float(), labels) + F.cross_entropy(nsp.float(), nsp_labels)

    return (lambda: BertForPreTraining(cfg)), (lambda: ReferenceBert(cfg)), loss, bert_train_flops(cfg, length, masked)


# ViT image classifiers: the paper's sizes at 224 pixels and 1000 classes.
VIT_SIZES = {
    "vit-b16": {"base": vit_config("B/16", num_classes=1000), "tiny": vit_config("tiny", num_classes=10)},
    "vit-l16": {"base": vit_config("L/16", num_classes=1000), "tiny": vit_config("tiny", num_classes=10)},
}


class ReferenceViT(nn.Module):
    """A ViT classifier from torch's own pre-norm TransformerEncoder: the same shapes as tvp's."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch = nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos = nn.Parameter(torch.zeros(1, cfg.grid**2 + 1, cfg.width))
        self.tower = ReferenceTower(cfg.width, cfg.layers, cfg.heads, cfg.eps)
        self.head = nn.Linear(cfg.width, cfg.num_classes)

    def forward(self, images):
        x = self.patch(images).flatten(2).transpose(1, 2)
        return self.head(self.tower(torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos)[:, 0])


def vit_train_flops(cfg: ViTConfig) -> float:
    """Per image: patch projection, the tower over 1 + N tokens, the head; backward twice the forward."""
    patches = cfg.grid**2
    forward = (2 * patches * 3 * cfg.patch_size**2 * cfg.width + tower_flops(patches + 1, cfg.width, cfg.layers)
               + 2 * cfg.width * cfg.num_classes)
    return 3 * forward


def vit_workload(family: str):
    def workload(size: str, batch: int, device: torch.device):
        """Random images and labels; cross-entropy of the logits."""
        cfg = VIT_SIZES[family][size]
        images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
        labels = torch.randint(0, cfg.num_classes, (batch,), device=device)

        def loss(model):
            return F.cross_entropy(model(images).float(), labels)

        return (lambda: VisionTransformer(cfg)), (lambda: ReferenceViT(cfg)), loss, vit_train_flops(cfg)

    return workload


# DETR: (config, canvas height, canvas width, boxes per image); COCO-like 800-pixel images, 16 a batch by default.
DETR_SIZES = {
    "base": (detr_config("r50", dropout=0.0, attn_dropout=0.0), 800, 1088, 8),
    "tiny": (detr_config("tiny"), 64, 96, 3),
}
DEFAULT_BATCH = {"detr-r50": 16}  # the others: 128


class ReferenceDetrLayer(nn.Module):
    """DETR's own post-norm layer from nn.MultiheadAttention: positions on queries and keys, cross-attention
    when ``memory`` is given."""

    def __init__(self, d: int, heads: int, ffn: int, cross: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.cross = nn.MultiheadAttention(d, heads, batch_first=True) if cross else None
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3 if cross else 2))
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x, pos, padding, memory=None, memory_pos=None):
        q = x + pos
        if memory is None:  # encoder: self-attention over the feature map, padded keys ignored
            x = self.norms[0](x + self.attn(q, q, x, key_padding_mask=padding, need_weights=False)[0])
        else:
            x = self.norms[0](x + self.attn(q, q, x, need_weights=False)[0])
            x = self.norms[1](x + self.cross(x + pos, memory + memory_pos, memory, key_padding_mask=padding,
                                             need_weights=False)[0])
        return self.norms[-1](x + self.fc2(F.relu(self.fc1(x))))


class ReferenceDETR(nn.Module):
    """DETR with the same backbone, positions and heads as tvp's, its Transformer from nn.MultiheadAttention."""

    def __init__(self, cfg: DetrConfig):
        super().__init__()
        d = cfg.d_model
        self.backbone = build_backbone(cfg)  # torchvision's ResNet, stem and first stage frozen, as tvp's
        self.proj = nn.Conv2d(self.backbone.num_channels, d, 1)
        self.position = PositionEmbeddingSine(d // 2)
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, d))
        self.encoder = nn.ModuleList(ReferenceDetrLayer(d, cfg.heads, cfg.ffn_dim, False)
                                     for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(ReferenceDetrLayer(d, cfg.heads, cfg.ffn_dim, True)
                                     for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.classes = nn.Linear(d, cfg.num_classes + 1)
        self.box = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4))

    def forward(self, images, mask):
        features = self.backbone(images)
        cells = F.interpolate(mask[None].float(), size=features.shape[-2:])[0].bool()
        x = self.proj(features).flatten(2).transpose(1, 2)
        pos = self.position(cells).to(x.dtype).flatten(2).transpose(1, 2)
        padding = cells.flatten(1)
        for layer in self.encoder:
            x = layer(x, pos, padding)
        query_pos = self.queries.expand(len(x), -1, -1)
        h, outputs = torch.zeros_like(query_pos), []
        for layer in self.decoder:
            h = layer(h, query_pos, padding, x, pos)
            outputs.append(self.norm(h))
        hidden = torch.stack(outputs)
        logits, boxes = self.classes(hidden), self.box(hidden).sigmoid()
        return {"logits": logits[-1], "boxes": boxes[-1],
                "aux": [{"logits": a, "boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]}


def detr_train_flops(cfg: DetrConfig, height: int, width: int, batch: int = 2) -> float:
    """Per image: forward and backward FLOPs of tvp's DETR as torch's FLOP counter sees them on the meta device
    (convolutions, matmuls, attention); the frozen stem and first stage have no backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = DETR(cfg).train()
        images = torch.randn(batch, 3, height, width)
        mask = torch.zeros(batch, height, width, dtype=torch.bool)
    with FlopCounterMode(display=False) as counter:
        out = model(images, mask)
        proxy = sum(pair[key].float().sum() for pair in [out, *out["aux"]] for key in ("logits", "boxes"))
        proxy.backward()
    return counter.get_total_flops() / batch


def detr_workload(size: str, batch: int, device: torch.device):
    """Padded COCO-like canvases, random boxes; the set loss (matching every decoder layer) on both sides."""
    cfg, height, width, objects = DETR_SIZES[size]
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, height, width, device=device)
    mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    mask[1::2, :, height:] = True  # every other image is height × height
    targets = [{"labels": torch.randint(0, cfg.num_classes, (objects,), generator=g).to(device),
                "boxes": torch.cat([torch.rand(objects, 2, generator=g) * 0.6 + 0.2,
                                    torch.rand(objects, 2, generator=g) * 0.3 + 0.05], 1).to(device)}
               for _ in range(batch)]
    criterion = DetectionLoss(cfg.num_classes).to(device)

    def loss(model):
        return criterion(model(images, mask), targets)["loss"]

    return (lambda: DETR(cfg)), (lambda: ReferenceDETR(cfg)), loss, detr_train_flops(cfg, height, width)


WORKLOADS = {"clip": clip_workload, "bert": bert_workload, "vit-b16": vit_workload("vit-b16"),
             "vit-l16": vit_workload("vit-l16"), "detr-r50": detr_workload}


def measure(model: nn.Module, loss_of, batch: int, steps: int, warmup: int, device: torch.device) -> float:
    """Steady-state bf16 training samples/s."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_of(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--size", choices=sorted(CLIP_SIZES), default="base")
    parser.add_argument("--batch", type=int, default=None, help="samples a step (128; DETR: 16)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_mfu: no GPU here; nothing measured (use --device cpu --size tiny to smoke-test the script)")
        return
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((p for key, p in PEAK_BF16.items() if key in name), None)
    torch.backends.cuda.matmul.allow_tf32 = True
    for family in WORKLOADS if args.model == "all" else [args.model]:
        torch.manual_seed(0)
        batch = args.batch or DEFAULT_BATCH.get(family, 128)
        build_tvp, build_reference, loss_of, flops = WORKLOADS[family](args.size, batch, device)
        print(f"device: {name}; {family.upper()} {args.size}, batch {batch}, bf16 autocast, "
              f"{args.steps} timed steps")
        rates = {}
        for label, build in (("tvp", build_tvp), ("reference", build_reference)):
            torch.manual_seed(0)
            rates[label] = measure(build(), loss_of, batch, args.steps, args.warmup, device)
            achieved = rates[label] * flops
            mfu = f"{achieved / peak:.1%}" if peak else "n/a (unknown peak)"
            print(f"  {label:9s} {rates[label]:9.1f} samples/s  {achieved / 1e12:8.2f} TFLOP/s  MFU {mfu}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"RESULT metric={family.replace('-', '_')}_{args.size}_bf16_train_samples_per_s tvp={rates['tvp']:.1f} "
              f"reference={rates['reference']:.1f} ratio={rates['tvp'] / rates['reference']:.3f} better=higher")


if __name__ == "__main__":
    main()
