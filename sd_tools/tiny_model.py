"""A tiny random-weight Stable Diffusion v1 pipeline, built offline in the real v1-4 folder layout.

Tests and local mode need a model folder that loads exactly like CompVis/stable-diffusion-v1-4
(same files, same classes, same loader) but builds in a second with no download. Component
configs are diffusers' own `get_dummy_components()` values (tests/pipelines/stable_diffusion);
the CLIP tokenizer is a hand-written byte-level vocabulary with no merges, so every byte is
one token and the 77-token limit is reached after ~75 characters. Images are noise-like but
deterministic: the same weights seed and request seed give the same pixels.

    python -m sd_tools.tiny_model --out .cache/tiny-sd
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


def build_tiny_model(path: Path, seed: int = 0, *, safety_checker: SafetyMode = "pass") -> Path:
    """Build the tiny pipeline into `path` (created; must be empty or absent) and return it.

    `safety_checker`: "pass" (a tiny checker that never fires, as on ordinary images),
    "flag" (fires on every image: tests the blacked-out path) or "none" (no checker folder).
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty: build the tiny model into a new folder")
    # fork_rng: building must not move the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        )
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            block_out_channels=[32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
        )
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=0,
                eos_token_id=2,
                hidden_size=32,
                intermediate_size=37,
                layer_norm_eps=1e-05,
                num_attention_heads=4,
                num_hidden_layers=5,
                pad_token_id=1,
                vocab_size=1000,
            )
        )
        torch.manual_seed(seed)
        checker = None if safety_checker == "none" else _tiny_safety_checker(safety_checker)

    # The scheduler config of the real v1-4 folder (PNDM): the endpoint must swap it for its own default.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file, merges_file = write_byte_level_tokenizer_files(Path(scratch))
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    # The safety checker's feature extractor must produce the checker's input size (32 here, 224 in v1-4).
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=checker is not None,
    )
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(path), safe_serialization=True)
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
        default="pass",
        help="tiny checker that never fires (default), fires on every image, or no checker at all",
    )
    args = parser.parse_args(argv)
    try:
        out = build_tiny_model(args.out, seed=args.seed, safety_checker=args.safety_checker)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
