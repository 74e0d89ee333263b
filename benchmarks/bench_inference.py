"""Seconds per image and peak memory: the public examples' SD settings next to this endpoint's, in one run.

    python benchmarks/bench_inference.py --device cpu                                   # tiny model
    python benchmarks/bench_inference.py --device cuda --model sd-v1-4-random --size 512  # real SD v1-4 cost
    python benchmarks/bench_inference.py --families [--device cuda]   # every family, tiny models, defaults

`--families` loads a tiny folder of each family (sd1, sd2 v-prediction, sdxl, sd-turbo, sdxl-turbo) with
code/inference.py's own load_model and times predict_fn with the family's defaults (steps, guidance, scheduler,
native size): the per-family overhead of the serving code, not real-model speed (docs/MODELS.md has those).

Configurations (each measured in a fresh subprocess so memory peaks do not mix):
  public  PNDM, 50 steps, classic attention (AttnProcessor), fp32 on CPU / fp32 weights under
          fp16 autocast on GPU: the Hugging Face SageMaker SD notebook and the original project.
  ours    DPM-Solver++ 25 steps, SDPA (AttnProcessor2_0), fp32 on CPU / fp16 weights on GPU,
          scheduler and attention set up by code/inference.py's own helpers.
`sd-v1-4-random` builds the full-size SD v1-4 architecture from its public config values with
random weights (same compute and memory as the real checkpoint; no download). Peak memory is
torch.cuda.max_memory_allocated on GPU and the worker's peak RSS (ru_maxrss) on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CODE_DIR = REPO / "stable-diffusion-custom-inference" / "code"
PROMPT = "an astronaut riding a horse on the moon, detailed, 4k"
CONFIGS = {
    "public": {"scheduler": "pndm", "steps": 50, "attention": "classic", "label": "public examples"},
    "ours": {"scheduler": "dpmsolver++", "steps": 25, "attention": "sdpa", "label": "ours (inference.py)"},
}

# Public CompVis/stable-diffusion-v1-4 component configs (unet/, vae/, text_encoder/ config.json).
SD14_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD14_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
SD14_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
# The v1-4 safety checker: CLIP ViT-L/14 vision tower + projection.
SD14_SAFETY_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "image_size": 224,
    "patch_size": 14,
}


def _inference_module() -> Any:
    sys.path.insert(0, str(CODE_DIR))
    import inference

    return inference


def _sd14_random_pipeline(device: str, dtype: Any) -> Any:
    """Full-size SD v1-4 with random weights, built directly on `device`."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sd_tools.tiny_model import write_byte_level_tokenizer_files

    torch.manual_seed(0)
    with torch.device(device):  # no slow CPU init + copy for ~1.2 B parameters on GPU
        unet = UNet2DConditionModel(**SD14_UNET)
        vae = AutoencoderKL(**SD14_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD14_TEXT))
        checker = StableDiffusionSafetyChecker(
            CLIPConfig(text_config=SD14_TEXT, vision_config=SD14_SAFETY_VISION, projection_dim=768)
        )
    with tempfile.TemporaryDirectory() as scratch:
        # Tokenising is not what is measured: the byte-level vocabulary gives the same 77-token input shape.
        vocab, merges = write_byte_level_tokenizer_files(Path(scratch))
        tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=checker.eval(),
        feature_extractor=CLIPImageProcessor(),
    )
    return pipe.to(device=device, dtype=dtype)


def _load(model: str, model_dir: str | None, device: str, dtype: Any) -> Any:
    if model == "tiny":
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline.from_pretrained(model_dir, torch_dtype=dtype, local_files_only=True).to(device)
    return _sd14_random_pipeline(device, dtype)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load and time one configuration in this (fresh) process."""
    import contextlib

    import torch
    from diffusers.models.attention_processor import AttnProcessor

    config = CONFIGS[name]
    cuda = args.device == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    inference = _inference_module()
    if name == "public":
        # fp32 weights; on GPU the notebook wraps the call in autocast (fp16 matmuls, fp32 weights in memory).
        dtype, dtype_label = torch.float32, "fp16 autocast" if cuda else "fp32"
    else:
        dtype, dtype_label = (torch.float16, "fp16") if cuda else (torch.float32, "fp32")
    started = time.perf_counter()
    pipe = _load(args.model, args.model_dir, args.device, dtype)
    if config["attention"] == "classic":
        # diffusers >= 0.20 picks SDPA by default on torch 2: force the processor the public examples ran with.
        pipe.unet.set_attn_processor(AttnProcessor())
        pipe.vae.set_attn_processor(AttnProcessor())
    else:
        inference.use_sdpa(pipe)
    pipe.scheduler = inference.make_scheduler(config["scheduler"], pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - started

    def run(steps: int) -> float:
        autocast = (
            torch.autocast("cuda", dtype=torch.float16) if cuda and name == "public" else contextlib.nullcontext()
        )
        generator = torch.Generator("cpu").manual_seed(0)
        if cuda:
            torch.cuda.synchronize()
        begin = time.perf_counter()
        with autocast:
            pipe(PROMPT, height=args.size, width=args.size, num_inference_steps=steps, generator=generator)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - begin

    run(2)  # warm-up: kernel selection, lazy allocations, first-call caches
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [run(config["steps"]) for _ in range(args.repeats)]
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mib()
    return {
        "name": name,
        "label": config["label"],
        "scheduler": config["scheduler"],
        "steps": config["steps"],
        "attention": "AttnProcessor2_0 (SDPA)" if config["attention"] == "sdpa" else "AttnProcessor (classic)",
        "dtype": dtype_label,
        "seconds": times,
        "load_s": load_s,
        "peak_mib": peak,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if cuda else None,
    }


FAMILIES = ("sd1", "sd2", "sdxl", "sd-turbo", "sdxl-turbo")


def family_worker(family: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load one tiny family folder with inference.load_model and time predict_fn with the family defaults."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    inference = _inference_module()
    started = time.perf_counter()
    model = inference.load_model(args.model_dir, env={})
    load_s = time.perf_counter() - started
    request = inference.GenerationRequest(prompt=PROMPT, accept="application/json", seed=0)

    def run() -> float:
        if model.device == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        result = inference.predict_fn(request, model)
        if model.device == "cuda":
            torch.cuda.synchronize()
        run.used = result["parameters"]  # type: ignore[attr-defined]
        return time.perf_counter() - begin

    run()  # warm-up
    times = [run() for _ in range(args.repeats)]
    used = run.used  # type: ignore[attr-defined]
    return {
        "family": family,
        "label": model.family.label,
        "steps": used["num_inference_steps"],
        "guidance": used["guidance_scale"],
        "scheduler": used["scheduler"],
        "size": f"{used['height']}x{used['width']}",
        "dtype": str(model.dtype).removeprefix("torch."),
        "variant": model.variant or "default",
        "seconds": times,
        "load_s": load_s,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if model.device == "cuda" else None,
    }


def run_families(args: argparse.Namespace, forwarded: list[str]) -> int:
    """Build each tiny family folder once, time it in its own subprocess, print a markdown table."""
    import tempfile

    from sd_tools.tiny_model import build_tiny_model

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-families-") as scratch:
        for family in FAMILIES:
            folder = build_tiny_model(Path(scratch) / family, family=family, fp16_variant=args.device == "cuda")
            command = [sys.executable, __file__, "--family-worker", family, *forwarded, "--model-dir", str(folder)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"error: the {family} worker failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    where = results[0]["gpu"] or f"{platform.processor() or platform.machine()} CPU, {results[0]['threads']} threads"
    print(f"## Tiny model per family through code/inference.py, {args.device} ({where})")
    print(f"{_versions()}; family defaults; median of {args.repeats} runs after a warm-up\n")
    print("| family | steps | guidance | scheduler | size | precision (weights) | s/image | min-max | load s |")
    print("| --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: |")
    for result in results:
        cells = [
            f"{result['label']} ({result['family']})",
            str(result["steps"]),
            f"{result['guidance']:g}",
            result["scheduler"],
            result["size"],
            f"{result['dtype']} ({result['variant']})",
            f"{statistics.median(result['seconds']):.3f}",
            f"{min(result['seconds']):.3f}-{max(result['seconds']):.3f}",
            f"{result['load_s']:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")
    return 0


def _versions() -> str:
    import diffusers
    import torch
    import transformers

    return f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"


def main(argv: list[str] | None = None) -> int:
    """Run every configuration in its own subprocess and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=("tiny", "sd-v1-4-random"), default="tiny")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: 64 tiny, 512 full)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's; 1 is steadier on a busy box)",
    )
    parser.add_argument("--families", action="store_true", help="time every family's tiny model with its defaults")
    parser.add_argument("--worker", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--family-worker", choices=FAMILIES, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.model == "tiny" else 512)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))

    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return 0
    if args.family_worker:
        print(json.dumps(family_worker(args.family_worker, args)))
        return 0

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda but torch sees no GPU", file=sys.stderr)
            return 2
    forwarded = [
        "--device",
        args.device,
        "--model",
        args.model,
        "--size",
        str(args.size),
        "--repeats",
        str(args.repeats),
    ]
    if args.threads:
        forwarded += ["--threads", str(args.threads)]
    if args.families:
        threads = ["--threads", str(args.threads)] if args.threads else []
        return run_families(args, ["--device", args.device, "--repeats", str(args.repeats), *threads])
    if args.model == "tiny":
        from sd_tools.tiny_model import ensure_tiny_model

        forwarded += ["--model-dir", str(ensure_tiny_model())]
    results = []
    for name in CONFIGS:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", name, *forwarded], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            print(f"error: the {name} worker failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))

    public = statistics.median(results[0]["seconds"])
    where = results[0]["gpu"] or f"{platform.processor() or platform.machine()} CPU, {results[0]['threads']} threads"
    print(f"## Stable Diffusion inference: {args.model}, {args.size}x{args.size}, {args.device} ({where})")
    print(f"{_versions()}; median of {args.repeats} runs after a warm-up; load average {os.getloadavg()[0]:.1f}\n")
    peak_kind = "peak GPU memory allocated" if args.device == "cuda" else "peak RSS"
    columns = ["configuration", "scheduler", "steps", "precision", "attention", "s/image", "min-max", "speed-up"]
    print("| " + " | ".join([*columns, f"{peak_kind} (MiB)"]) + " |")
    print("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for result in results:
        median = statistics.median(result["seconds"])
        cells = [
            result["label"],
            result["scheduler"],
            str(result["steps"]),
            result["dtype"],
            result["attention"],
            f"{median:.3f}",
            f"{min(result['seconds']):.3f}-{max(result['seconds']):.3f}",
            f"{public / median:.2f}x",
            f"{result['peak_mib']:,.0f}",
        ]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
