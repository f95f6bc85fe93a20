#!/usr/bin/env python
"""Train the embedded default models of mpsearch on scikit-learn's digits, offline, on two CPU cores.

Writes (all fp32 safetensors):
  mpsearch/assets/classifier.safetensors     the digit classifier used by the content metrics
  mpsearch/assets/default-dit/               DigitsPipeline with a DiTTransformer2DModel (the "default")
  mpsearch/assets/default-unet/              DigitsPipeline with a UNet2DModel ("default-unet")
  mpsearch/assets/training_log.json          seeds, steps, wall times, accuracies (provenance)
  docs/default_models.md, docs/img/default_{dit,unet}_samples.png

Usage:
  python scripts/train_default.py                 # everything (about 25 minutes on 2 CPU cores)
  python scripts/train_default.py --eval-only     # re-evaluate the shipped models and rewrite the docs
  python scripts/train_default.py --quick         # a few steps of everything, to smoke-test the script

Data: sklearn.datasets.load_digits (1797 images, 8x8, values 0..16; it ships inside scikit-learn), upsampled to
16x16 bilinearly, divided by 16 ([0, 1], the classifier's input) and mapped to [-1, 1] for diffusion.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# Threads that wait passively instead of spinning: on a shared 2-core machine spinning OpenMP threads of two
# busy processes starve each other (measured: 2-7x slower steps); unshared, the cost is small.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffusers import DDIMScheduler, DDPMScheduler, DiTTransformer2DModel, UNet2DModel  # noqa: E402

from mpsearch.apps.pipeline import DEFAULT_GUIDANCE_SCALE, NULL_CLASS, DigitsPipeline, load_pipeline  # noqa: E402
from mpsearch.classifier import DigitClassifier, load_classifier  # noqa: E402

ASSETS = REPO / "mpsearch" / "assets"
DOCS = REPO / "docs"
SEED = 0
EVAL_SEED = 1234
GRID_SEED = 4321
EVAL_STEPS = 20
GUIDANCE_SWEEP = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
CLASS_DROP_P = 0.1

DIT_CONFIG = dict(
    sample_size=16, patch_size=2, in_channels=1, out_channels=1, num_layers=4, num_attention_heads=4,
    attention_head_dim=32, num_embeds_ada_norm=10, norm_type="ada_norm_zero",
)
# Widths chosen so that several layers have input dims that are multiples of 128 (int4, group 128) and all are
# multiples of 16 (nvfp4): every time_emb_proj (128), the up blocks' conv1 (128*9) and conv_shortcut (128),
# time_embedding.linear_2 (128); the attention projections are 64 wide (int4 with group 64 only).
UNET_CONFIG = dict(
    sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=32, norm_num_groups=8, num_class_embeds=11,
)
DDPM_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                   clip_sample=True)
# Inference: DDIM, eta 0, "trailing" spacing (the first step starts at t=999, pure noise), x0 clipped to [-1, 1].
DDIM_OVERRIDES = dict(timestep_spacing="trailing", clip_sample=True, set_alpha_to_one=True)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def load_data():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(digits.target, dtype=torch.long)
    return x, y


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to max_shift pixels (zero padding): the classifier's only augmentation."""
    n = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + 16, dx[i]:dx[i] + 16]
    return out


# ----------------------------------------------------------------------------------------------- classifier
def train_classifier(x, y, epochs: int, log: dict) -> DigitClassifier:
    from sklearn.model_selection import train_test_split

    seed_all(SEED)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.25, random_state=SEED,
                                           stratify=y.numpy())
    xtr, ytr, xte, yte = x[idx_train], y[idx_train], x[idx_test], y[idx_test]
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * math.ceil(len(ytr) / 64))
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    for _ in tqdm(range(epochs), desc="classifier", unit="epoch"):
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        for i in range(0, len(ytr), 64):
            b = perm[i:i + 64]
            xb = random_shift(xtr[b], gen)
            loss = F.cross_entropy(model(xb), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    log["classifier"] = dict(epochs=epochs, train_size=len(ytr), test_size=len(yte), test_accuracy=acc,
                             wall_s=round(time.time() - t0, 1),
                             params=sum(p.numel() for p in model.parameters()))
    print(f"classifier: held-out accuracy {acc:.4f} on {len(yte)} images ({time.time() - t0:.0f} s)")
    return model


# ----------------------------------------------------------------------------------------------- diffusion
def make_denoiser(kind: str):
    if kind == "dit":
        model = DiTTransformer2DModel(**DIT_CONFIG)
        # diffusers' DiT gives every block its own label embedder, and each one drops labels independently in
        # train mode; the model would then almost never see the null class in all blocks at once, which is what
        # classifier-free guidance asks at inference. Drop labels once per sample here instead (below).
        for block in model.transformer_blocks:
            block.norm1.emb.class_embedder.dropout_prob = 0.0
        return model
    return UNet2DModel(**UNET_CONFIG)


def train_diffusion(kind: str, data: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int, lr: float,
                    log: dict):
    seed_all(SEED + (1 if kind == "unet" else 2))
    model = make_denoiser(kind)
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    noise_sched = DDPMScheduler(**DDPM_CONFIG)
    alphas = noise_sched.alphas_cumprod
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(100, steps // 10 + 1)
    lr_at = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))  # noqa
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(SEED)
    n = data.shape[0]
    perm, pos = torch.randperm(n, generator=gen), 0
    t0 = time.time()
    running = None
    bar = tqdm(range(steps), desc=f"train {kind}", unit="step")
    for step in bar:
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        b = perm[pos:pos + batch_size]
        pos += batch_size
        x0, y = data[b], labels[b].clone()
        y[torch.rand(len(y), generator=gen) < CLASS_DROP_P] = NULL_CLASS
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(y),), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(model(xt, t, class_labels=y).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    wall = time.time() - t0
    print(f"{kind}: {steps} steps, final smoothed loss {running:.4f}, {wall:.0f} s")
    if kind == "dit":
        for block in ema.transformer_blocks:  # back to the constructor's value; only train mode reads it
            block.norm1.emb.class_embedder.dropout_prob = 0.1
    log[kind] = dict(steps=steps, batch_size=batch_size, lr=lr, ema_decay=0.999, class_drop_p=CLASS_DROP_P,
                     final_loss=round(running, 5), wall_s=round(wall, 1),
                     params=sum(p.numel() for p in ema.parameters()))
    return ema


def make_inference_scheduler() -> DDIMScheduler:
    # Built from explicit arguments: DDIMScheduler.from_config(ddpm.config, ...) would silently keep the DDPM
    # config's default-valued keys (its `_use_default_values`), timestep_spacing among them.
    scheduler = DDIMScheduler(**{**DDPM_CONFIG, **DDIM_OVERRIDES})
    for key, value in DDIM_OVERRIDES.items():
        assert scheduler.config[key] == value, (key, scheduler.config[key])
    return scheduler


def save_pipeline(kind: str, model) -> Path:
    scheduler = make_inference_scheduler()
    pipe = DigitsPipeline(scheduler=scheduler, **({"transformer": model} if kind == "dit" else {"unet": model}))
    out = ASSETS / f"default-{kind}"
    pipe.save_pretrained(out, safe_serialization=True)
    return out


# ----------------------------------------------------------------------------------------------- evaluation
def eval_labels() -> list[int]:
    return [c for c in range(10) for _ in range(10)]  # 10 per class


@torch.no_grad()
def recognition(pipe, clf, guidance: float, steps: int = EVAL_STEPS):
    labels = eval_labels()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    images = pipe(labels, num_inference_steps=steps, generator=gen, guidance_scale=guidance, output_type="pt").images
    pred = clf(images).argmax(1)
    hit = pred == torch.tensor(labels)
    per_class = [int(hit[c * 10:(c + 1) * 10].sum()) for c in range(10)]
    return hit.float().mean().item(), per_class


def save_grid(pipe, path: Path, guidance: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [c for c in range(10) for _ in range(8)]
    gen = torch.Generator().manual_seed(GRID_SEED)
    images = pipe(labels, num_inference_steps=EVAL_STEPS, generator=gen, guidance_scale=guidance).images[..., 0]
    fig, axes = plt.subplots(10, 8, figsize=(8 * 0.8, 10 * 0.8 + 0.4))
    for i, ax in enumerate(axes.flat):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if i % 8 == 0:
            ax.set_ylabel(str(labels[i]), rotation=0, labelpad=10, fontsize=11)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def layer_summary(model) -> dict:
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            rows.append((name, "Linear", m.in_features, m.out_features))
        elif isinstance(m, torch.nn.Conv2d):
            rows.append((name, "Conv2d", m.in_channels * m.kernel_size[0] * m.kernel_size[1], m.out_channels))
    return dict(
        n_linear=sum(r[1] == "Linear" for r in rows), n_conv=sum(r[1] == "Conv2d" for r in rows),
        in_mult_16=sum(r[2] % 16 == 0 for r in rows), in_mult_128=sum(r[2] % 128 == 0 for r in rows),
        total=len(rows),
    )


def evaluate(log: dict):
    """Score both shipped pipelines (guidance sweep), check determinism, draw the sample grids."""
    clf = load_classifier()
    results = {}
    for kind, name in (("dit", "default"), ("unet", "default-unet")):
        t0 = time.time()
        pipe = load_pipeline(name)
        load_s = time.time() - t0
        pipe.set_progress_bar_config(disable=True)
        sweep = {}
        for g in GUIDANCE_SWEEP:
            rate, per_class = recognition(pipe, clf, g)
            sweep[g] = (rate, per_class)
            print(f"{kind}: guidance {g}: recognised {rate * 100:.0f}% per class {per_class}")
        # determinism: the same seed gives the same images
        a = pipe([3, 7], num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
        b = pipe([3, 7], num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
        t0 = time.time()
        pipe(eval_labels(), num_inference_steps=EVAL_STEPS, generator=torch.Generator().manual_seed(0))
        gen_s = time.time() - t0
        img = DOCS / "img" / f"default_{kind}_samples.png"
        save_grid(pipe, img, DEFAULT_GUIDANCE_SCALE,
                  f"{name} ({type(pipe.denoiser).__name__}), {EVAL_STEPS} DDIM steps, "
                  f"guidance {DEFAULT_GUIDANCE_SCALE}")
        files = sorted((ASSETS / f"default-{kind}").rglob("*.safetensors"))
        results[kind] = dict(name=name, cls=type(pipe.denoiser).__name__, sweep=sweep, load_s=load_s,
                             deterministic=bool(np.array_equal(a, b)), gen_s=gen_s,
                             params=sum(p.numel() for p in pipe.denoiser.parameters()),
                             bytes=sum(f.stat().st_size for f in files), layers=layer_summary(pipe.denoiser),
                             image=img)
    # the guidance that works best on average over both models (ties -> the smaller scale)
    best = max(GUIDANCE_SWEEP, key=lambda g: (sum(r["sweep"][g][0] for r in results.values()), -g))
    log["eval"] = {k: {str(g): v[0] for g, v in r["sweep"].items()} for k, r in results.items()}
    log["eval_best_guidance"] = best
    log["pipeline_default_guidance"] = DEFAULT_GUIDANCE_SCALE
    if best != DEFAULT_GUIDANCE_SCALE:
        print(f"NOTE: guidance {best} scores best on average; the pipeline default is {DEFAULT_GUIDANCE_SCALE}")
    return results, best


def write_docs(log: dict, results: dict, best: float, command: str) -> None:
    g0 = DEFAULT_GUIDANCE_SCALE
    clf = log.get("classifier", {})
    total = sum(log.get(k, {}).get("wall_s", 0) for k in ("classifier", "dit", "unet"))
    lines = [
        "# The embedded default models",
        "",
        "`mpsearch.load_pipeline(\"default\")` (a DiT) and `mpsearch.load_pipeline(\"default-unet\")` (a UNet) are two",
        "class-conditional pixel-space diffusion models of 16x16 digits, and `mpsearch.classifier.load_classifier()`",
        "is a small digit classifier used by the content metrics (class agreement, Frechet distance in its 64-d",
        "feature space). All three are trained offline on two CPU cores by `scripts/train_default.py` on",
        "scikit-learn's digits data set (1797 images, 8x8, values 0..16, shipped inside scikit-learn), upsampled to",
        "16x16 bilinearly and scaled to [-1, 1] (the classifier reads [0, 1]). Weights are fp32 safetensors in",
        "`mpsearch/assets/`; each pipeline is a normal diffusers folder (`model_index.json`, `transformer/` or",
        "`unet/`, `scheduler/`) whose `model_index.json` names `DigitsPipeline`.",
        "",
        "## Results",
        "",
        f"- Classifier held-out accuracy: **{clf.get('test_accuracy', float('nan')) * 100:.1f}%** "
        f"({clf.get('test_size', '?')} test images, a stratified 25% split, seed {SEED}).",
        f"- Pipeline default guidance scale: **{g0}** (best average over both models in the sweep below: {best}).",
        "",
        f"Recognition rate: the share of 100 generated samples (10 per class, {EVAL_STEPS} DDIM steps, seed "
        f"{EVAL_SEED}) that the classifier assigns to the requested digit, by guidance scale:",
        "",
        "| model | denoiser | params | weights | " + " | ".join(f"g={g}" for g in GUIDANCE_SWEEP) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in GUIDANCE_SWEEP) + " |",
    ]
    for _kind, r in results.items():
        cells = [(f"**{r['sweep'][g][0] * 100:.0f}%**" if g == g0 else f"{r['sweep'][g][0] * 100:.0f}%")
                 for g in GUIDANCE_SWEEP]
        lines.append(f"| `{r['name']}` | {r['cls']} | {r['params'] / 1e6:.2f} M | {r['bytes'] / 1e6:.1f} MB | "
                     + " | ".join(cells) + " |")
    lines += ["", f"Per class, at the default guidance {g0} (hits out of 10 for digits 0..9):", ""]
    for _kind, r in results.items():
        lines.append(f"- `{r['name']}`: {r['sweep'][g0][1]}")
    lines += ["", "## Samples", ""]
    for _kind, r in results.items():
        rel = r["image"].relative_to(DOCS).as_posix()
        lines += [f"`{r['name']}` ({r['cls']}), rows = digits 0..9, {EVAL_STEPS} DDIM steps, guidance {g0}, "
                  f"seed {GRID_SEED}:", "", f"![{r['name']} samples]({rel})", ""]
    lines += ["## Architectures", ""]
    for _kind, r in results.items():
        ly = r["layers"]
        lines.append(f"- `{r['name']}`: {r['cls']}, {r['params']:,} parameters; {ly['n_linear']} Linear + "
                     f"{ly['n_conv']} Conv2d layers, of which {ly['in_mult_16']} have an input dim that is a "
                     f"multiple of 16 and {ly['in_mult_128']} a multiple of 128 (input dim of a conv = "
                     f"in_channels x kh x kw).")
    lines += [
        "",
        "DiT: `DiTTransformer2DModel(" + ", ".join(f"{k}={v!r}" for k, v in DIT_CONFIG.items()) + ")`: inner dim"
        " 128, feed-forward 512, 64 tokens of 2x2 patches; every block has its own adaLN-Zero timestep+label"
        " embedder (label table of 11 rows: the 10 digits and the null class 10).",
        "",
        "UNet: `UNet2DModel(" + ", ".join(f"{k}={v!r}" for k, v in UNET_CONFIG.items()) + ")`: 16x16 -> 8x8 ->"
        " 4x4, self-attention at 8x8 and 4x4 and in the mid block; class embedding table of 11 rows.",
        "",
        "## Training",
        "",
        f"- Noise schedule: `DDPMScheduler({', '.join(f'{k}={v!r}' for k, v in DDPM_CONFIG.items())})`, epsilon"
        " loss (MSE), uniform timesteps. Inference uses `DDIMScheduler` with the same betas and "
        + ", ".join(f"`{k}={v!r}`" for k, v in DDIM_OVERRIDES.items()) + ".",
        f"- Classifier-free guidance: labels replaced by the null class {NULL_CLASS} with p={CLASS_DROP_P}, once"
        " per sample (for the DiT the per-block label dropout of diffusers' embedders is switched off during"
        " training, since it drops labels independently in each block). At inference the pipeline runs"
        " `[uncond, cond]` as one batch of 2N and combines `eps_u + g * (eps_c - eps_u)`.",
    ]
    for kind in ("dit", "unet"):
        t = log.get(kind)
        if t:
            lines.append(f"- {dict(dit='DiT', unet='UNet')[kind]}: {t['steps']} steps of batch {t['batch_size']}"
                         f" (all 1797 images), AdamW"
                         f" lr {t['lr']} (warmup, cosine decay), grad clip 1.0, EMA decay {t['ema_decay']} (the"
                         f" EMA weights ship), final smoothed loss {t['final_loss']}, {t['wall_s'] / 60:.1f} min.")
    if clf:
        lines.append(f"- Classifier: {clf['epochs']} epochs, AdamW one-cycle lr 2e-3, random 1-pixel shifts, "
                     f"{clf['params']:,} parameters, {clf['wall_s']:.0f} s.")
    lines += [
        f"- Seeds fixed (torch {SEED}, split {SEED}), `torch.set_num_threads(2)`; every number here is in"
        " `mpsearch/assets/training_log.json`.",
        "",
        "Rebuild (the exact command that produced the shipped files):",
        "",
        "```",
        log.get("command", command),
        "```",
        "",
        f"Wall time of the whole script: {log.get('script_wall_s', float('nan')) / 60:.1f} min (training: "
        f"{total / 60:.1f} min) on {log.get('machine', '?')}, torch {log.get('torch', '?')}, diffusers "
        f"{log.get('diffusers', '?')}"
        + (f" ({log['note']})" if log.get("note") else "")
        + ". The script sets `OMP_WAIT_POLICY=PASSIVE` unless it is set already (spinning OpenMP threads slow"
        " training several-fold when another process shares the two cores). `python scripts/train_default.py"
        " --eval-only` re-runs only the evaluation and rewrites this page.",
        "",
        "Loading a default pipeline takes "
        + ", ".join(f"{r['load_s']:.2f} s ({r['name']})" for r in results.values())
        + "; generating the 100 evaluation samples with 20 steps and guidance takes "
        + ", ".join(f"{r['gen_s']:.1f} s ({r['name']})" for r in results.values())
        + " on this CPU. Same generator seed, same images: "
        + ", ".join(f"{r['name']} {'yes' if r['deterministic'] else 'NO'}" for r in results.values()) + ".",
        "",
        "## Caveats",
        "",
        "- The data set is tiny (1797 images of 8x8 pixels, upsampled): these are toy models for exercising the",
        "  planner offline, not image generators; their numbers say nothing about large models.",
        "- The recognition rate is measured by a classifier trained on the same data, so it checks that the",
        "  requested digit is recognisable, not sample diversity or fidelity.",
        "- Guidance above 2 hurts at 20 steps: at 3 and more the samples come out smeared with leftover noise "
        "and whole",
        "  classes stop being recognised (see the sweep). Keep guidance in 1.5-2 with these models.",
        "- The DiT's label embedders drop labels on their own in train mode (independently per block); code that",
        "  fine-tunes the shipped DiT should switch that off as `train_default.py` does and drop labels itself.",
        "- Retraining on another torch version or CPU can give slightly different weights (floating-point",
        "  summation order); the shipped files are the reference.",
        "",
    ]
    (DOCS / "default_models.md").write_text("\n".join(lines))
    print(f"wrote {DOCS / 'default_models.md'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dit-steps", type=int, default=2000)
    ap.add_argument("--unet-steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dit-lr", type=float, default=1e-3)
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument("--clf-epochs", type=int, default=40)
    ap.add_argument("--only", choices=("classifier", "dit", "unet"), action="append",
                    help="train only these (repeatable); the others are kept as shipped")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the shipped models and rewrite the docs")
    ap.add_argument("--quick", action="store_true", help="a few steps of everything (smoke test; overwrites assets)")
    args = ap.parse_args()

    torch.set_num_threads(2)
    t_start = time.time()
    log_path = ASSETS / "training_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    command = " ".join(["python", "scripts/train_default.py", *sys.argv[1:]])
    if not args.eval_only:
        if args.quick:
            args.dit_steps = args.unet_steps = 20
            args.clf_epochs = 1
        which = set(args.only or ("classifier", "dit", "unet"))
        x, y = load_data()
        ASSETS.mkdir(parents=True, exist_ok=True)
        if "classifier" in which:
            from safetensors.torch import save_file

            clf = train_classifier(x, y, args.clf_epochs, log)
            save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(ASSETS / "classifier.safetensors"))
        data = x * 2 - 1
        for kind in ("dit", "unet"):
            if kind in which:
                steps = args.dit_steps if kind == "dit" else args.unet_steps
                lr = args.dit_lr if kind == "dit" else args.unet_lr
                model = train_diffusion(kind, data, y, steps, args.batch_size, lr, log)
                print(f"saved {save_pipeline(kind, model)}")
        log.update(command=command, script_train_s=round(time.time() - t_start, 1),
                   date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), torch=torch.__version__,
                   diffusers=__import__("diffusers").__version__,
                   machine=f"{platform.machine()}, {torch.get_num_threads()} threads")
    results, best = evaluate(log)
    if not args.eval_only:
        log["script_wall_s"] = round(time.time() - t_start, 1)
    (ASSETS / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    write_docs(log, results, best, command)
    print(f"done in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
