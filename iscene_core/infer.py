"""iscene-infer: one image + an instance-id mask -> one mesh per instance in one GLB.

Pipeline: the image (scene crop: the whole view on a black square) and one TRELLIS-style crop per
instance -> DINOv2 features -> the scene latent and all instance latents sampled jointly with
Scene Context Attention (each instance row attends to its scene row) -> sparse-structure decoder
(occupancy logits 64^3) -> marching cubes -> ``OUT`` (GLB, a node ``instance_<id>`` per instance,
placed in the shared view-centric grid), ``OUT.npz`` (voxels: ``scene`` and ``instance_<id>``, (M, 3)
uint8 in the view grid) and ``OUT.json`` (a report: ids, faces, voxel counts, sampler settings).

The mask is a single-channel PNG (16-bit like the shards' inst.png, or 8-bit): pixel value i =
instance i, 0 = background. Sampler defaults come from the weights' pipeline.json.
``--stage2`` hands each instance's voxels to the upstream TRELLIS stage 2 (textured meshes) when the
``trellis`` package is importable (it needs CUDA extensions; not installable on CPU machines).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["InferenceError", "build_parser", "load_inputs", "sample_scene", "GRID_TO_GLTF", "main"]

log = logging.getLogger("iscene-infer")

# Node transform from the view grid (x right, y forward, z up) to glTF's +Y-up frame (x right,
# y up, z toward the viewer): (x, y, z) -> (x, z, -y). Vertex data stays in grid coordinates.
# (A tuple, so that importing this module for --help needs neither numpy nor torch.)
GRID_TO_GLTF = ((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, -1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))


class InferenceError(RuntimeError):
    """Bad input for iscene-infer (missing file, size mismatch, incompatible weights): exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every iscene tool
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="iscene-infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", type=Path, help="RGB image of the scene (PNG/JPEG)")
    p.add_argument("--masks", type=Path, required=True, help="instance-id mask: single-channel PNG, same size as IMAGE, 0 = background")
    p.add_argument("--weights", type=Path, required=True, help="TRELLIS-image-large folder (pipeline.json + ckpts/) or a fine-tuned one in that layout")
    p.add_argument("--out", type=Path, required=True, help="output GLB (OUT.npz voxels and OUT.json report are written beside it)")
    p.add_argument("--flow-weights", type=Path, default=None,
                   help="fine-tuned flow weights (.safetensors state dict, e.g. an iscene-train checkpoint's ema.safetensors) "
                        "loaded strictly into the flow model that --weights configures")
    p.add_argument("--dinov2", type=Path, default=None,
                   help="local DINOv2 ViT-L/14-reg (required): a transformers folder (preferred), or a torch.hub layout (repo "
                        "folder, <hub> folder or $TORCH_HOME) -- loading that RUNS the repo's hubconf.py, so only point it at code "
                        "you trust. The torch.hub cache is never used unless named here")
    p.add_argument("--conditioner-weights", type=Path, default=None,
                   help="image encoder trained by iscene-train --conditioner learned (a checkpoint's conditioner_ema.safetensors, "
                        "with its .json beside it); used instead of DINOv2 (then --dinov2 is not needed)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: pipeline.json, 25 released)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance strength (default: pipeline.json, 5.0 released)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (CPU generator, so a seed gives the same noise on any device)")
    p.add_argument("--instance-view", choices=("crop", "masked-frame"), default="crop",
                   help="instance conditioning image: crop = TRELLIS's crop (default; the released weights), masked-frame = the "
                        "whole view with everything but the instance black (for flows trained with iscene-train --instance-view masked-frame)")
    p.add_argument("--no-sca", action="store_true", help="sample every instance independently, as plain TRELLIS (ablation)")
    p.add_argument("--stage2", action="store_true", help="also run upstream TRELLIS stage 2 per instance (needs the trellis package)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu; on a CPU the released "
                                                  "fp16 weights are run in fp32, ~60x faster there)")
    p.add_argument("--debug", action="store_true", help="show the full traceback when the run fails")
    return p


def load_inputs(image: Path, masks: Path) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """RGB uint8 (H, W, 3), instance ids int64 (H, W) and the sorted non-zero ids, with clear errors."""
    import numpy as np

    from PIL import Image

    for path, flag in ((image, "IMAGE"), (masks, "--masks")):
        if not Path(path).is_file():
            raise InferenceError(f"{flag} {path}: file not found")
    try:
        rgb = np.asarray(Image.open(image).convert("RGB"))
        mask_img = Image.open(masks)
        ids_img = np.asarray(mask_img).astype(np.int64)
    except OSError as exc:
        raise InferenceError(f"cannot read image: {exc}") from None
    if ids_img.ndim != 2:
        raise InferenceError(f"--masks {masks}: expected a single-channel id image, got mode {mask_img.mode} shape {ids_img.shape}")
    if ids_img.shape != rgb.shape[:2]:
        raise InferenceError(f"--masks {masks} is {ids_img.shape[1]}x{ids_img.shape[0]} but IMAGE {image} is "
                             f"{rgb.shape[1]}x{rgb.shape[0]}: they must have the same size")
    ids = [int(i) for i in np.unique(ids_img) if i != 0]
    if not ids:
        raise InferenceError(f"--masks {masks}: no instance (every pixel is 0)")
    return rgb, ids_img, ids


def _cond_channels(flow: torch.nn.Module) -> int:
    return int(flow.blocks[0].cross_attn.to_kv.in_features)


def sample_scene(
    flow: torch.nn.Module,
    decoder: torch.nn.Module,
    cond: torch.Tensor,
    sampler: dict[str, Any],
    *,
    seed: int = 0,
    sca: bool = True,
    progress: bool = False,
) -> tuple[torch.Tensor, np.ndarray]:
    """Joint sampling of one scene group: ``cond`` row 0 = the scene, rows 1.. = its instances.

    Returns (latents (N+1, 8, 16, 16, 16), decoder logits float32 (N+1, 64, 64, 64)). Noise is
    drawn on the CPU from ``seed`` so a seed reproduces across devices. With ``sca=False`` the
    instances are sampled as plain TRELLIS (the scene row is then unused by them).
    """
    import torch

    from iscene_core.flow import euler_sample

    device = cond.device
    n = cond.shape[0]
    r = flow.resolution
    g = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(n, flow.in_channels, r, r, r, generator=g).to(device)
    scene_index = torch.zeros(n, dtype=torch.long, device=device)  # every row's scene is row 0
    prev = flow.sca_enabled
    flow.sca_enabled = sca
    try:
        with torch.no_grad():
            z = euler_sample(flow, noise, cond, torch.zeros_like(cond), scene_index=scene_index, progress=progress, **sampler)["samples"]
            logits = decoder(z.to(next(decoder.parameters()).dtype))[:, 0].float().cpu().numpy()
    finally:
        flow.sca_enabled = prev
    return z, logits


def sampler_params(pipeline_sampler: dict[str, Any], steps: int | None, cfg: float | None) -> dict[str, Any]:
    keys = ("steps", "cfg_strength", "cfg_interval", "rescale_t", "sigma_min")
    params = {k: pipeline_sampler[k] for k in keys if k in pipeline_sampler}
    if steps is not None:
        if steps < 1:
            raise InferenceError(f"--steps must be >= 1, got {steps}")
        params["steps"] = steps
    if cfg is not None:
        params["cfg_strength"] = cfg
    if "cfg_interval" in params:
        params["cfg_interval"] = tuple(float(v) for v in params["cfg_interval"])
    return params


def _load_flow_weights(flow: torch.nn.Module, path: Path) -> None:
    """Replace the flow's weights by a safetensors state dict (strict: same architecture or a clear error)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise InferenceError(f"--flow-weights {path}: file not found")
    try:
        state = load_file(str(path), device=str(next(flow.parameters()).device))
        flow.load_state_dict(state, strict=True)
    except Exception as exc:  # safetensors header errors and key/shape mismatches alike
        raise InferenceError(f"--flow-weights {path}: does not fit the flow model of --weights ({str(exc).splitlines()[0]})") from None


def _run_stage2(weights: Path, crops: torch.Tensor, voxels: dict[str, np.ndarray], out_dir: Path, seed: int) -> list[str]:
    """Upstream TRELLIS stage 2 on our stage-1 voxels, one textured GLB per instance.

    Only runs where the upstream ``trellis`` package (CUDA extensions) is importable; this code path
    is not exercised on the project's CPU machines.
    """
    import numpy as np

    import torch
    from PIL import Image

    try:
        from trellis.pipelines import TrellisImageTo3DPipeline
        from trellis.utils import postprocessing_utils
    except ImportError as exc:
        raise InferenceError(f"--stage2 needs the upstream TRELLIS package (github.com/microsoft/TRELLIS), not importable here: {exc}") from None
    pipe = TrellisImageTo3DPipeline.from_pretrained(str(weights))
    pipe.cuda()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k, (name, coords) in enumerate(voxels.items()):
        if name == "scene" or len(coords) == 0:
            continue
        img = Image.fromarray((crops[k].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))
        cond = pipe.get_cond([img])
        c = torch.from_numpy(coords.astype(np.int32))
        c = torch.cat([torch.zeros(len(c), 1, dtype=torch.int32), c], 1).cuda()  # (N, 4): batch, x, y, z
        torch.manual_seed(seed)
        slat = pipe.sample_slat(cond, c)
        dec = pipe.decode_slat(slat, ["mesh", "gaussian"])
        glb = postprocessing_utils.to_glb(dec["gaussian"][0], dec["mesh"][0])
        path = out_dir / f"{name}.glb"
        glb.export(str(path))
        written.append(str(path))
    return written


def load_learned_conditioner(path: Path):
    """A ``--conditioner learned`` image encoder from ``X.safetensors`` + ``X.json`` (strict)."""
    from safetensors.torch import load_file

    from iscene_core.conditioning import LearnedConditioner

    cfg_path = path.with_suffix(".json")
    if not path.is_file() or not cfg_path.is_file():
        raise InferenceError(f"--conditioner-weights {path}: needs {path.name} and {cfg_path.name} (from an iscene-train checkpoint)")
    try:
        cfg = json.loads(cfg_path.read_text())
        model = LearnedConditioner(**cfg["args"])
        model.load_state_dict(load_file(str(path)), strict=True)
    except Exception as exc:
        raise InferenceError(f"--conditioner-weights {path}: not a learned conditioner ({str(exc).splitlines()[0]})") from None
    return model.eval().requires_grad_(False)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole CLI after argument parsing; returns the report written to ``OUT.json``."""
    import numpy as np

    import torch

    from iscene_core.conditioning import DinoConditioner, conditioner_image_size, crop_scene, instance_image
    from iscene_core.mesh_export import export_scene, save_voxels
    from iscene_core.trellis import load_pipeline

    rgb, id_map, ids = load_inputs(args.image, args.masks)
    if args.out.suffix.lower() != ".glb":
        raise InferenceError(f"--out {args.out}: expected a .glb path")
    if args.conditioner_weights is not None:
        pass
    elif args.dinov2 is None:
        raise InferenceError("--dinov2 is required: a local DINOv2 ViT-L/14-reg transformers folder (preferred), or a torch.hub "
                             "repo/cache you trust (e.g. --dinov2 \"$TORCH_HOME/hub\"; that runs its hubconf.py)")
    elif not args.dinov2.exists():
        raise InferenceError(f"--dinov2 {args.dinov2}: no such folder")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        # fp16 kernels on a CPU are ~60x slower than fp32 (decoder 80 s vs 1.2 s): run the released weights in fp32 there
        pipe = load_pipeline(args.weights, device=device, use_fp16=False if device.type == "cpu" else None)
    except (FileNotFoundError, ValueError) as exc:
        raise InferenceError(f"--weights: {exc}") from None
    flow, decoder = pipe["flow"].eval(), pipe["decoder"].eval()
    if args.flow_weights is not None:
        _load_flow_weights(flow, args.flow_weights)
    dino_path = args.dinov2
    if args.conditioner_weights is not None:
        cond_model = load_learned_conditioner(args.conditioner_weights).to(device)
        dino_path = args.conditioner_weights
    else:
        try:
            cond_model = DinoConditioner.from_pretrained(dino_path).to(device)
        except (FileNotFoundError, ValueError) as exc:
            raise InferenceError(f"--dinov2: {exc}") from None
    if cond_model.out_channels != _cond_channels(flow):
        raise InferenceError(f"--dinov2 {dino_path} gives {cond_model.out_channels}-channel tokens but the flow model in "
                             f"{args.weights} expects {_cond_channels(flow)}")
    params = sampler_params(pipe["sampler"], args.steps, args.cfg)

    size = conditioner_image_size(cond_model)  # the size the conditioner was trained at
    crops = torch.stack([crop_scene(rgb, size)] + [instance_image(rgb, id_map == i, size, view=args.instance_view) for i in ids])
    with torch.no_grad():
        cond = cond_model.encode(crops.to(device))
    log.info("sampling 1 scene + %d instances (%s SCA), %d steps", len(ids), "with" if not args.no_sca else "without", params.get("steps", 25))
    _, logits = sample_scene(flow, decoder, cond, params, seed=args.seed, sca=not args.no_sca, progress=sys.stderr.isatty())

    names = ["scene"] + [f"instance_{i}" for i in ids]
    inst_logits = {name: logits[k] for k, name in enumerate(names) if k > 0}
    faces = export_scene(inst_logits, args.out, node_transform=np.array(GRID_TO_GLTF))  # empty instances: empty nodes
    voxels = {name: np.argwhere(logits[k] > 0).astype(np.uint8) for k, name in enumerate(names)}
    save_voxels(args.out.with_suffix(".npz"), voxels)
    report: dict[str, Any] = {
        "image": str(args.image), "masks": str(args.masks), "weights": str(args.weights),
        "flow_weights": None if args.flow_weights is None else str(args.flow_weights), "dinov2": str(dino_path),
        "instances": ids, "sca": not args.no_sca, "seed": args.seed, "device": str(device), "instance_view": args.instance_view,
        "flow_dtype": str(flow.dtype).replace("torch.", ""), "decoder_dtype": str(decoder.dtype).replace("torch.", ""),
        "mask_pixels": {f"instance_{i}": int((id_map == i).sum()) for i in ids},
        "faces": faces, "voxels": {k: int(len(v)) for k, v in voxels.items()},
        "sampler": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
    }
    if args.stage2:
        report["stage2"] = _run_stage2(args.weights, crops, voxels, args.out.with_name(f"{args.out.stem}_stage2"), args.seed)
    tmp = args.out.with_name(f".{args.out.stem}.tmp{os.getpid()}.json")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, args.out.with_suffix(".json"))
    return report


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad arguments or inputs (one line), 1 the run failed (one line; --debug: traceback)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.stage2:
        try:
            import trellis  # noqa: F401  (fail before the long stage-1 run, not after it)
        except ImportError as exc:
            print(f"iscene-infer: --stage2 needs the upstream TRELLIS package, not importable here: {exc}", file=sys.stderr)
            return 2
    try:
        report = run(args)
    except InferenceError as exc:
        print(f"iscene-infer: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        first = (str(exc).splitlines() or [""])[0]
        print(f"iscene-infer: failed: {type(exc).__name__}: {first} (--debug shows the traceback)", file=sys.stderr)
        return 1
    empty = [k for k, v in report["faces"].items() if v == 0]
    if empty:
        log.warning("%d of %d instances decoded empty (%s): their nodes are empty", len(empty), len(report["faces"]), ", ".join(empty))
    print(f"{args.out}: {len(report['faces'])} instance nodes ({len(empty)} empty); voxels in {args.out.with_suffix('.npz')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
