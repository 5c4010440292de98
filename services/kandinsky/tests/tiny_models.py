"""A tiny, randomly initialised Kandinsky 2.2 prior and decoder, saved like the real ones.

The tests cannot download the real weights (about 10 GB, and no hub access), yet they must run the service's
real loading path. So this builds every component the two pipelines need with the same classes and the same
kinds of configuration as ``kandinsky-community/kandinsky-2-2-prior`` / ``-decoder``, only a few kilobytes
wide, and ``save_pretrained``\\s them into ``OUTDIR/prior`` and ``OUTDIR/decoder``. The pictures are noise,
but sizes, seeds and the whole request path are real.

The MoVQ keeps the real 8× scale factor (four blocks), and the UNet only attends at its lowest resolution,
so the default 768×768 request works on a 96×96 latent like the real model and stays quick on a CPU.

Run ``python -m tests.tiny_models OUTDIR`` from ``services/kandinsky`` to build them by hand.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import (
    DDPMScheduler,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
    PriorTransformer,
    UnCLIPScheduler,
    UNet2DConditionModel,
    VQModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

EMBED_DIM = 32  # CLIP text/image embedding width; 1280 in the real models
MAX_TOKENS = 77  # CLIP's context; the prior's positional table is sized for exactly this many tokens
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# A few merges, so that the tokenizer really applies BPE rather than only splitting into bytes.
MERGES = [("t", "h"), ("th", "e</w>"), ("a", "t</w>"), ("c", "at</w>")]


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values (the GPT-2/CLIP scheme):
    printable Latin-1 bytes stand for themselves, the rest are moved past U+0100."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in kept:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_tokenizer(workdir: Path) -> CLIPTokenizer:
    """A CLIP tokenizer over every byte (so any prompt, Cyrillic included, tokenizes) plus a few merges,
    read back from the ``vocab.json`` + ``merges.txt`` pair the way a real checkpoint's would be."""
    alphabet = _byte_alphabet()
    tokens = [BOS, EOS, *alphabet, *(c + "</w>" for c in alphabet), *(a + b for a, b in MERGES)]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES)
    (workdir / "merges.txt").write_text(merges, encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(workdir), model_max_length=MAX_TOKENS)


def build_prior(tokenizer: CLIPTokenizer) -> KandinskyV22PriorPipeline:
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=EMBED_DIM,
            projection_dim=EMBED_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=EMBED_DIM,
            projection_dim=EMBED_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        )
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    prior = PriorTransformer(
        num_attention_heads=2,
        attention_head_dim=12,
        num_layers=1,
        embedding_dim=EMBED_DIM,
        num_embeddings=MAX_TOKENS,
    )
    # The real prior un-normalises its output with CLIP statistics; zeros there would make every embedding 0.
    with torch.no_grad():
        prior.clip_std.fill_(1.0)
        prior.clip_mean.normal_(0.0, 0.1)
    scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    return KandinskyV22PriorPipeline(
        prior=prior,
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        image_processor=image_processor,
    )


def build_decoder() -> KandinskyV22Pipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=8,  # mean and variance, as the real decoder predicts
        addition_embed_type="image",
        encoder_hid_dim=EMBED_DIM,
        encoder_hid_dim_type="image_proj",
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    )
    movq = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 32, 32, 32),  # MoVQ's SpatialNorm needs multiples of 32
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=16,
        vq_embed_dim=4,
        norm_num_groups=8,
        norm_type="spatial",
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="epsilon",
        steps_offset=1,
        thresholding=False,
    )
    return KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)


def save_tiny_models(outdir: str | Path) -> tuple[Path, Path]:
    """Build both pipelines and save them; return the prior and decoder folders (``KANDINSKY_PRIOR`` and
    ``KANDINSKY_DECODER``)."""
    outdir = Path(outdir)
    prior_dir, decoder_dir = outdir / "prior", outdir / "decoder"
    with tempfile.TemporaryDirectory() as workdir:
        tokenizer = build_tokenizer(Path(workdir))
        build_prior(tokenizer).save_pretrained(prior_dir)
    build_decoder().save_pretrained(decoder_dir)
    return prior_dir, decoder_dir


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.tiny_models OUTDIR", file=sys.stderr)
        return 2
    prior_dir, decoder_dir = save_tiny_models(argv[0])
    print(f"export KANDINSKY_PRIOR={prior_dir.resolve()}")
    print(f"export KANDINSKY_DECODER={decoder_dir.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
