"""Tiny random-weight versions of real diffusers pipelines, built offline from configs.

Each builder makes a complete pipeline (denoiser, VAE, text encoders, tokenizers, scheduler) with the real
classes and the real wiring of the published model, only a few channels wide, so that the whole mpsearch
flow (profile, solve, generate, apply) runs on it in seconds on a CPU. Nothing is downloaded: the text
encoders are built from configs and the tokenizers from a vocabulary written here.

    from mpsearch.apps.testing import save_tiny_pipeline
    save_tiny_pipeline("sd3", "/tmp/tiny-sd3")     # then: mpsearch profile --model /tmp/tiny-sd3 --prompts p.txt

Dimensions are multiples of 16 (so NVFP4 is eligible), and the FFN down-projections read 128 features (so
INT4's group of 128 is eligible there): every format is exercised. Images are 16x16 (8x8 latents).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from mpsearch.archs import load_arch
from mpsearch.errors import UsageError

TINY_IMAGE_SIZE = 16  # pixels; the VAE downsamples by 2, so latents are 8x8


def _transformers():
    try:
        import transformers
    except ImportError:  # pragma: no cover - depends on the environment
        raise UsageError(
            "tiny text-conditioned pipelines need the 'transformers' package: pip install 'mpsearch[text]'"
        ) from None
    return transformers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte-to-printable-character table (a byte-level BPE's base alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def clip_tokenizer(max_length: int = 77):
    """A CLIPTokenizer over single bytes (no merges): 514 tokens, built offline."""
    tf = _transformers()
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n")
        tok = tf.CLIPTokenizer(str(Path(d) / "vocab.json"), str(Path(d) / "merges.txt"), model_max_length=max_length)
    return tok


def t5_tokenizer(max_length: int = 512):
    """A T5 (Unigram, SentencePiece-style) fast tokenizer over lowercase characters, built offline."""
    tf = _transformers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,'-"]
    tk = Tokenizer(models.Unigram(pieces, unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                      special_tokens=[("</s>", 1)])
    cls = getattr(tf, "T5TokenizerFast", None) or tf.T5Tokenizer
    return cls(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0,
               model_max_length=max_length)


def _clip_text(projection: bool, hidden: int = 32, seed: int = 0):
    tf = _transformers()
    torch.manual_seed(seed)
    cfg = tf.CLIPTextConfig(vocab_size=514, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
                            bos_token_id=512, eos_token_id=513, pad_token_id=513)
    model = tf.CLIPTextModelWithProjection(cfg) if projection else tf.CLIPTextModel(cfg)
    return model.eval()


def _t5(d_model: int = 32, seed: int = 0):
    tf = _transformers()
    torch.manual_seed(seed)
    cfg = tf.T5Config(vocab_size=44, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=2,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return tf.T5EncoderModel(cfg).eval()


def _vae(latent_channels: int = 4, flow: bool = False, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    kw = (dict(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
          if flow else {})
    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, sample_size=TINY_IMAGE_SIZE, **kw).eval()


def _ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1)


def _flow(dynamic: bool = False):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dynamic:
        return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def tiny_sd15(seed: int = 0):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
                                attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    return StableDiffusionPipeline(vae=_vae(), text_encoder=_clip_text(False), tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=_ddim(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def tiny_sdxl(seed: int = 0):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    # projection_class_embeddings_input_dim = 6 * addition_time_embed_dim + text_encoder_2 projection_dim
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=64,
                                attention_head_dim=(2, 4), use_linear_projection=True,
                                transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).eval()
    return StableDiffusionXLPipeline(vae=_vae(), text_encoder=_clip_text(False, seed=1),
                                     text_encoder_2=_clip_text(True, seed=2), tokenizer=clip_tokenizer(),
                                     tokenizer_2=clip_tokenizer(), unet=unet, scheduler=_ddim(),
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)


def tiny_pixart_sigma(seed: int = 0):
    from diffusers import PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=16,
                                           num_attention_heads=2, caption_channels=32, in_channels=4,
                                           cross_attention_dim=32, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False,
                                           norm_eps=1e-6, use_additional_conditions=False).eval()
    return PixArtSigmaPipeline(tokenizer=t5_tokenizer(), text_encoder=_t5(32), vae=_vae(), transformer=transformer,
                               scheduler=_ddim())


def tiny_sd3(seed: int = 0):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    # joint_attention_dim = T5's d_model (>= the two CLIPs' widths side by side); pooled = both CLIP projections
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
                                        pos_embed_max_size=16).eval()
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=_flow(), vae=_vae(flow=True),
                                    text_encoder=_clip_text(True, seed=1), tokenizer=clip_tokenizer(),
                                    text_encoder_2=_clip_text(True, seed=2), tokenizer_2=clip_tokenizer(),
                                    text_encoder_3=_t5(64, seed=3), tokenizer_3=t5_tokenizer())


def tiny_flux(seed: int = 0):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    # latents are packed 2x2: in_channels = 4 * latent channels; RoPE axes add up to attention_head_dim
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True,
                                         axes_dims_rope=(4, 4, 8)).eval()
    return FluxPipeline(scheduler=_flow(dynamic=True), vae=_vae(flow=True), text_encoder=_clip_text(False, seed=1),
                        tokenizer=clip_tokenizer(), text_encoder_2=_t5(32, seed=2), tokenizer_2=t5_tokenizer(),
                        transformer=transformer)


def tiny_dit(seed: int = 0):
    from diffusers import DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    # 1000 classes: DiTPipeline's null (guidance) class is the hard-coded id 1000
    transformer = DiTTransformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=2, num_embeds_ada_norm=1000,
                                        norm_type="ada_norm_zero").eval()
    return DiTPipeline(transformer=transformer, vae=_vae(), scheduler=_ddim())


TINY_BUILDERS = {
    "sd15": tiny_sd15,
    "sdxl": tiny_sdxl,
    "pixart-sigma": tiny_pixart_sigma,
    "sd3": tiny_sd3,
    "flux": tiny_flux,
    "dit": tiny_dit,
}


def build_tiny_pipeline(name: str, seed: int = 0):
    """A tiny random-weight pipeline of the named architecture (see ``TINY_BUILDERS``)."""
    if name not in TINY_BUILDERS:
        raise UsageError(f"unknown tiny pipeline {name!r}; expected one of {', '.join(TINY_BUILDERS)}")
    pipe = TINY_BUILDERS[name](seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(name: str, path, seed: int = 0) -> Path:
    """Build the tiny pipeline ``name`` and save it (safetensors) as a local diffusers folder at ``path``."""
    path = Path(path)
    build_tiny_pipeline(name, seed).save_pretrained(path, safe_serialization=True)
    return path


# ------------------------------------------------------------------ real-size denoisers in small pipelines

REAL_SIZE = ("sd15", "sdxl", "pixart-sigma", "dit-xl", "flux-dev", "flux-schnell")


def real_size_pipeline(name: str, dtype=torch.float32, seed: int = 0, device=None):
    """A pipeline whose denoiser is the published architecture ``name`` (``mpsearch/archs/<name>.json``) at
    its real size with random weights, around small random text encoders and a small VAE (downsampling 2x,
    so ``size`` px images have ``size/2`` px latents). For benchmarks of what grows with the denoiser:
    profiling, applying, exporting and running plans at the size users run.

    ``device``: build the denoiser's weights there (e.g. ``"cuda"``: FLUX's 12 B parameters are initialized on
    the GPU rather than as 48 GB of float32 host memory); the small components stay on the CPU."""
    import diffusers

    if name not in REAL_SIZE:
        raise UsageError(f"no real-size pipeline for {name!r}; expected one of {', '.join(REAL_SIZE)}")
    arch = load_arch(name)
    cfg = arch["config"]
    torch.manual_seed(seed)
    if device is None:
        denoiser = getattr(diffusers, arch["denoiser_class"]).from_config(cfg).to(dtype).eval()
    else:
        with torch.device(device):
            denoiser = getattr(diffusers, arch["denoiser_class"]).from_config(cfg)
        denoiser = denoiser.to(dtype).eval()
    if name == "sd15":
        pipe = diffusers.StableDiffusionPipeline(
            vae=_vae(), text_encoder=_clip_text(False, hidden=cfg["cross_attention_dim"]),
            tokenizer=clip_tokenizer(), unet=denoiser, scheduler=_ddim(), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
    elif name == "sdxl":
        # the two encoders' hidden states side by side make cross_attention_dim; the pooled projection and six
        # time ids (addition_time_embed_dim each) make projection_class_embeddings_input_dim
        pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        enc2 = _clip_text(True, hidden=cfg["cross_attention_dim"] - 768, seed=2)
        enc2.config.projection_dim = pooled
        enc2.text_projection = torch.nn.Linear(enc2.config.hidden_size, pooled, bias=False)
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=_vae(), text_encoder=_clip_text(False, hidden=768, seed=1), text_encoder_2=enc2.eval(),
            tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=denoiser, scheduler=_ddim(),
            force_zeros_for_empty_prompt=True, add_watermarker=False)
    elif name == "pixart-sigma":
        pipe = diffusers.PixArtSigmaPipeline(tokenizer=t5_tokenizer(), text_encoder=_t5(cfg["caption_channels"]),
                                             vae=_vae(), transformer=denoiser, scheduler=_ddim())
    elif name.startswith("flux"):
        # CLIP's pooled output feeds pooled_projection_dim, T5's hidden states joint_attention_dim; 16 latent
        # channels packed 2x2 make in_channels
        pipe = diffusers.FluxPipeline(
            scheduler=_flow(dynamic=True), vae=_vae(latent_channels=cfg["in_channels"] // 4, flow=True),
            text_encoder=_clip_text(False, hidden=cfg["pooled_projection_dim"], seed=1), tokenizer=clip_tokenizer(),
            text_encoder_2=_t5(cfg["joint_attention_dim"], seed=2), tokenizer_2=t5_tokenizer(), transformer=denoiser)
    else:
        pipe = diffusers.DiTPipeline(transformer=denoiser, vae=_vae(), scheduler=_ddim())
    pipe.set_progress_bar_config(disable=True)
    return pipe
