"""Tiny random-weight Stable Diffusion pipelines (v1, 2.x v-prediction, XL, turbo), built offline in real layouts.

Tests and local mode need a model folder that loads exactly like CompVis/stable-diffusion-v1-4
(same files, same classes, same loader) but builds in a second with no download. Component
configs are diffusers' own `get_dummy_components()` values (tests/pipelines/stable_diffusion);
the CLIP tokenizer is a hand-written byte-level vocabulary with no merges, so every byte is
one token and the 77-token limit is reached after ~75 characters. Images are noise-like but
deterministic: the same weights seed and request seed give the same pixels.

SD 2.x and SDXL use diffusers' own SD2/SDXL test components the same way (FACTS.md).

    python -m sd_tools.tiny_model --out .cache/tiny-sd [--family sdxl] [--fp16-variant]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "tiny-sd"
# Written last: a folder without it is a half-built leftover. Bump the version when the
# builder changes so stale caches are rebuilt rather than reused.
COMPLETE_MARKER = ".tiny-sd-complete"
BUILD_VERSION = "1"
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
# Every component subfolder of a v1-4 download (safety_checker is optional).
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor")

SafetyMode = Literal["pass", "flag", "none"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table (the base alphabet of the BPE vocab)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def write_byte_level_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """Write a CLIP vocab.json (256 bytes, the same with `</w>`, two specials) and an empty merges.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [char + "</w>" for char in alphabet] + list(SPECIAL_TOKENS)
    vocab_file = folder / "vocab.json"
    merges_file = folder / "merges.txt"
    vocab_file.write_text(json.dumps({token: index for index, token in enumerate(tokens)}), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n", encoding="utf-8")
    return vocab_file, merges_file


def _tiny_safety_checker(mode: SafetyMode) -> Any:
    """A CLIP-vision safety checker small enough for tests; `flag` marks every image as NSFW."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 1000,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 4,
        },
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        # A concept fires when cosine(image, concept) - threshold > 0. Random concepts with the
        # default threshold 1.0 can never fire ("pass"); a threshold of -1.0 always fires ("flag").
        checker.concept_embeds.copy_(torch.randn_like(checker.concept_embeds))
        checker.special_care_embeds.copy_(torch.randn_like(checker.special_care_embeds))
        threshold = -1.0 if mode == "flag" else 1.0
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    return checker.eval()


FAMILIES = ("sd1", "sd2", "sdxl", "sd-turbo", "sdxl-turbo")
Family = Literal["sd1", "sd2", "sdxl", "sd-turbo", "sdxl-turbo"]
# code/sd_families.FAMILY_FILE: how a turbo folder says what it is (its model_index.json cannot).
FAMILY_FILE = "speech_to_image.json"


def _clip_text_config(**overrides: Any) -> Any:
    from transformers import CLIPTextConfig

    values = {
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_size": 32,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-05,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "pad_token_id": 1,
        "vocab_size": 1000,
    }
    return CLIPTextConfig(**{**values, **overrides})


def _tokenizer() -> Any:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        vocab_file, merges_file = write_byte_level_tokenizer_files(Path(scratch))
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


def _vae(seed: int) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )


def _scheduler(family: str) -> Any:
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler

    betas = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
    if family == "sd2":  # stabilityai/stable-diffusion-2-1 (768, v-prediction) ships DDIM
        return DDIMScheduler(**betas, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                             prediction_type="v_prediction")  # fmt: skip
    if family == "sdxl":  # stabilityai/stable-diffusion-xl-base-1.0 ships Euler on leading timesteps
        return EulerDiscreteScheduler(**betas, steps_offset=1, timestep_spacing="leading")
    if family == "sd-turbo":
        return EulerDiscreteScheduler(**betas, steps_offset=1, timestep_spacing="trailing")
    if family == "sdxl-turbo":
        return EulerAncestralDiscreteScheduler(**betas, steps_offset=1, timestep_spacing="trailing")
    # The scheduler config of the real v1-4 folder (PNDM): the endpoint must swap it for its own default.
    return PNDMScheduler(**betas, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)


# The two-block UNet skeleton of diffusers' own SD and SDXL dummy components (their tests' get_dummy_components).
TINY_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
}


def _sd_pipeline(family: str, seed: int, safety_checker: SafetyMode) -> Any:
    """SD 1.x (diffusers' SD dummy components) or SD 2.x (the SD2 ones: linear projection, gelu text encoder)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextModel

    sd2 = family in ("sd2", "sd-turbo")
    sd2_unet = {"attention_head_dim": (2, 4), "use_linear_projection": True} if sd2 else {}
    # fork_rng: building must not move the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            **TINY_UNET,
            cross_attention_dim=32,
            **sd2_unet,
        )
        vae = _vae(seed)
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            _clip_text_config(**({"hidden_act": "gelu", "projection_dim": 512} if sd2 else {}))
        )
        torch.manual_seed(seed)
        checker = None if safety_checker == "none" else _tiny_safety_checker(safety_checker)
    # The safety checker's feature extractor must produce the checker's input size (32 here, 224 in v1-4).
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer(),
        scheduler=_scheduler(family),
        safety_checker=checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=checker is not None,
    )


def _sdxl_pipeline(family: str, seed: int) -> Any:
    """SDXL from diffusers' SDXL dummy components: text_time UNet, two text encoders (the second projected)."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            **TINY_UNET,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the pooled 32-wide text embedding
            cross_attention_dim=64,  # both encoders' 32-wide hidden states, concatenated
            norm_num_groups=1,
        )
        vae = _vae(seed)
        torch.manual_seed(seed)
        text_config = _clip_text_config(hidden_act="gelu", projection_dim=32)
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
    return StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(),
        scheduler=_scheduler(family),
    )


def build_tiny_model(
    path: Path,
    seed: int = 0,
    *,
    safety_checker: SafetyMode | None = None,
    family: Family = "sd1",
    fp16_variant: bool = False,
) -> Path:
    """Build the tiny pipeline of `family` into `path` (created; must be empty or absent) and return it.

    `safety_checker` (SD 1.x/2.x only; default "pass" for sd1 as in v1-4, "none" for the others as in the
    stabilityai repos): "pass" (never fires), "flag" (fires on every image) or "none" (no checker folder).
    Turbo folders get a speech_to_image.json naming their family, as `package_model --family` writes it.
    `fp16_variant` also saves every weight file as an fp16 variant (`*.fp16.safetensors`), as Hub repos do.
    """
    import torch

    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: use one of {FAMILIES}")
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty: build the tiny model into a new folder")
    checker = safety_checker or ("pass" if family == "sd1" else "none")
    if "xl" in family:
        if checker != "none":
            raise ValueError("SDXL pipelines have no safety checker component")
        pipe = _sdxl_pipeline(family, seed)
    else:
        pipe = _sd_pipeline(family, seed, checker)
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(path), safe_serialization=True)
    if fp16_variant:
        pipe.to(torch.float16).save_pretrained(str(path), safe_serialization=True, variant="fp16")
    if "turbo" in family:
        (path / FAMILY_FILE).write_text(json.dumps({"family": family}), encoding="utf-8")
    return path


def is_complete(path: Path) -> bool:
    """True when `path` holds a finished tiny model built by this version of the builder."""
    marker = Path(path) / COMPLETE_MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8").strip() == BUILD_VERSION


def ensure_tiny_model(cache_dir: Path | None = None) -> Path:
    """Return a complete tiny model in `cache_dir` (default `<repo>/.cache/tiny-sd`), building it once."""
    target = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: readers never see a half-written folder, and two
    # processes racing both build but only one rename wins.
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_tiny_model(scratch / "model")
        (scratch / "model" / COMPLETE_MARKER).write_text(BUILD_VERSION, encoding="utf-8")
        if target.exists() and not is_complete(target):
            shutil.rmtree(target)  # a leftover from an interrupted or older build
        try:
            os.rename(scratch / "model", target)
        except OSError:
            if not is_complete(target):  # lost the race to a broken folder: surface it
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    """CLI: build the tiny model into --out."""
    parser = argparse.ArgumentParser(prog="python -m sd_tools.tiny_model", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="new or empty folder to write the pipeline into")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    parser.add_argument(
        "--safety-checker",
        choices=("pass", "flag", "none"),
        default=None,
        help="tiny checker that never fires (sd1's default), fires on every image, or none (the others' default)",
    )
    parser.add_argument("--family", choices=FAMILIES, default="sd1", help="architecture to build (default sd1)")
    parser.add_argument("--fp16-variant", action="store_true", help="also save *.fp16.safetensors weights")
    args = parser.parse_args(argv)
    try:
        out = build_tiny_model(
            args.out,
            seed=args.seed,
            safety_checker=args.safety_checker,
            family=args.family,
            fp16_variant=args.fp16_variant,
        )
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
