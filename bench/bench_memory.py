"""Peak training memory and step time of the flow transformer with SCA, per configuration (tiny / small / L).

    python bench/bench_memory.py [--rows 7] [--measure-tokens 64 128 256]

No GPU was available where this was written, so the figures are EXTRAPOLATED from CPU measurements:
  1. one transformer block of each configuration runs forward + backward on the CPU for a scene
     group of ``--rows`` rows (1 scene + 6 instances, SCA on) at two small token counts; the bytes
     autograd saves for backward are counted with ``torch.autograd.graph.saved_tensors_hooks``
     (unique storages, parameters excluded), in fp32 and under bf16 autocast;
  2. bytes per block are fitted as ``c + a*T`` in the token count T from two token counts, checked
     at a third (measured: linear to < 1%; the CPU attention kernel keeps no T^2 matrix, like GPU
     flash attention), and extrapolated to the configuration's T (4096 for small/L, 512 for tiny);
     tiny is also measured at its full T;
  3. peak = static (fp32 weights + grads + AdamW moments + EMA = 20 B/param, bf16 weight copies
     under autocast 2 B/param, frozen encoder/decoder and DINOv2 ViT-L in fp32) + activations:
     without gradient checkpointing all blocks' saved bytes; with it, one block's input per block
     plus one block's saved bytes (its recomputation);
  4. step time: the largest measured CPU block time scaled by FLOPs to the full T (CPU figure), and a GPU estimate
     = analytic step FLOPs / (peak x assumed MFU); both labelled as not measured on a GPU.
Compared in the same run: with vs without gradient checkpointing, and the groups of 1+6 rows that
fit an 80 GB and a 24 GB card. Results: bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402
from bench.bench_model import forward_flops  # noqa: E402
from iscene_core.trellis import FLOW_COMMON, FLOW_PRESETS, ModulatedTransformerCrossBlock, build_flow  # noqa: E402

GB = 1e9
COND_TOKENS = 1374  # DINOv2 ViT-L/14-reg at 518 px: 1 + 4 + 37 * 37
DINOV2_L_PARAMS = 304_368_640  # ViT-L/14 with 4 registers
# released stage-1 VAE (ss_enc/ss_dec_conv3d_16l8): channels [512, 128, 32] / [512, 128, 32]
VAE_ARGS = dict(latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2, channels=[32, 128, 512])


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_measure(name: str, rows: int, tokens: int, bf16: bool) -> tuple[int, int, float]:
    """(saved activation bytes, bf16 weight-copy bytes, fwd+bwd seconds) of one block on the CPU."""
    preset = {**FLOW_COMMON, **FLOW_PRESETS[name]}
    c, cc, heads = preset["model_channels"], preset["cond_channels"], preset["num_heads"]
    torch.manual_seed(0)
    block = ModulatedTransformerCrossBlock(c, cc, heads, preset["mlp_ratio"], preset["qk_rms_norm"])
    param_ptrs = {p.untyped_storage().data_ptr() for p in block.parameters()}
    param_shapes = {tuple(p.shape) for p in block.parameters()}
    h = torch.randn(rows, tokens, c, requires_grad=True)
    t_emb = torch.randn(rows, c)
    ctx = torch.randn(rows, COND_TOKENS, cc)
    scene_index = torch.zeros(rows, dtype=torch.long)  # row 0 = the scene, rows 1.. its instances (SCA)
    acts: dict[int, int] = {}
    wcopies: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr in param_ptrs or ptr == h.untyped_storage().data_ptr():
            return t
        if t.dtype == torch.bfloat16 and tuple(t.shape) in param_shapes and t.requires_grad:
            wcopies[ptr] = st.nbytes()
        else:
            acts[ptr] = st.nbytes()
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = block(h, t_emb, ctx, scene_index)
    out.float().square().mean().backward()
    return sum(acts.values()), sum(wcopies.values()), time.perf_counter() - t0


def fit(ts: list[int], ys: list[float]) -> tuple[float, float]:
    """(c, a) of y = c + a*T through the first two measurements (c: the context/modulation tensors
    that do not grow with T; the CPU attention kernel keeps no T^2 matrix -- checked by a third T)."""
    (t1, t2), (y1, y2) = ts[:2], ys[:2]
    a = (y2 - y1) / (t2 - t1)
    return y1 - a * t1, a


def block_flops(preset: dict, rows: int, tokens: int) -> float:
    """Matmul FLOPs of one block's forward for ``rows`` rows (1 scene + instances with SCA) at T tokens."""
    c, cc = preset["model_channels"], preset["cond_channels"]
    hidden = int(c * preset["mlp_ratio"])
    linear = 2 * tokens * (6 * c * c + 2 * c * hidden) + 2 * COND_TOKENS * cc * 2 * c + 2 * 6 * c * c
    attn = 4 * tokens * tokens * c + 4 * tokens * COND_TOKENS * c
    return rows * (linear + attn) + (rows - 1) * 4 * tokens * tokens * c  # SCA: instance rows attend to 2T keys


def cpu_step_seconds(preset: dict, rows: int, tokens: int, measured: dict[str, float]) -> float:
    """A step's CPU time scaled by FLOPs from the largest measured block (timings under load are noisy,
    so no fit through them)."""
    t_meas = max(int(t) for t in measured)
    return preset["num_blocks"] * measured[str(t_meas)] * block_flops(preset, rows, tokens) / block_flops(preset, rows, t_meas)


def config_row(name: str, rows: int, measure_tokens: list[int], peak_tflops: float, mfu: float) -> dict:
    preset = {**FLOW_COMMON, **FLOW_PRESETS[name]}
    tokens = (preset["resolution"] // preset["patch_size"]) ** 3
    with torch.device("meta"):
        flow = build_flow(name)
        from iscene_core.trellis import SparseStructureDecoder, SparseStructureEncoder

        vae = _params(SparseStructureEncoder(in_channels=1, **VAE_ARGS)) + _params(SparseStructureDecoder(out_channels=1, **VAE_ARGS))
    P = _params(flow)
    nb = preset["num_blocks"]
    out: dict = {"tokens_per_row": tokens, "rows": rows, "flow_params": P, "num_blocks": nb}
    for prec in ("fp32", "bf16"):
        meas = [block_measure(name, rows, t, prec == "bf16") for t in measure_tokens]
        c, a = fit(measure_tokens, [m[0] for m in meas])
        per_block = c + a * tokens
        wcopy = (2 * P) if prec == "bf16" else 0
        static = 20 * P + wcopy + 4 * (vae + DINOV2_L_PARAMS if name != "tiny" else vae)
        block_input = rows * tokens * preset["model_channels"] * 4  # fp32 residual stream saved per block
        act_plain, act_ckpt = nb * per_block, nb * block_input + per_block
        t3, y3 = measure_tokens[2], meas[2][0]
        out[prec] = {
            "measured_block_saved_bytes": {str(t): m[0] for t, m in zip(measure_tokens, meas)},
            "measured_block_cpu_s": {str(t): round(m[2], 4) for t, m in zip(measure_tokens, meas)},
            "fit_bytes_per_block": {"constant": c, "per_token": a},
            "fit_check_third_T_rel_error": abs(c + a * t3 - y3) / y3,
            "extrapolated_block_saved_GB": per_block / GB,
            "static_GB": static / GB,
            "peak_GB_no_checkpointing": (static + act_plain) / GB,
            "peak_GB_checkpointing": (static + act_ckpt) / GB,
            "groups_fit_80GB": {"no_ckpt": int(max(0, 80 * GB - static) // act_plain), "ckpt": int(max(0, 80 * GB - static) // act_ckpt)},
            "groups_fit_24GB": {"no_ckpt": int(max(0, 24 * GB - static) // act_plain), "ckpt": int(max(0, 24 * GB - static) // act_ckpt)},
            "cpu_step_s_extrapolated": cpu_step_seconds(preset, rows, tokens, {str(t): m[2] for t, m in zip(measure_tokens, meas)}),
        }
    args = {**preset}
    step_flops = 3 * forward_flops(args, COND_TOKENS, rows, rows - 1)  # forward + backward (2x)
    out["step_tflop"] = step_flops / 1e12
    out["gpu_step_s_estimate"] = {"value": step_flops / (peak_tflops * 1e12 * mfu), "assumes": f"{peak_tflops} TFLOP/s peak x MFU {mfu}"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=7, help="rows of one scene group (1 scene + 6 instances)")
    ap.add_argument("--measure-tokens", type=int, nargs=3, default=[64, 128, 256],
                    help="token counts measured on the CPU: the first two fit, the third checks the fit")
    ap.add_argument("--configs", nargs="+", default=["tiny", "small", "L"], help="presets of iscene_core.trellis.FLOW_PRESETS")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak for the step-time estimate (H100 SXM)")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation for the GPU estimate")
    ap.add_argument("--recompute", action="store_true",
                    help="recompute the derived figures of bench/results/memory.json from its stored measurements (no new measurement)")
    args = ap.parse_args()
    if args.recompute:
        import json

        from bench._common import RESULTS

        res = json.loads((RESULTS / "memory.json").read_text())
        res.pop("machine", None)
        for name, row in res["configs"].items():
            preset = {**FLOW_COMMON, **FLOW_PRESETS[name]}
            for prec in ("fp32", "bf16"):
                row[prec]["cpu_step_s_extrapolated"] = cpu_step_seconds(preset, row["rows"], row["tokens_per_row"],
                                                                        row[prec]["measured_block_cpu_s"])
        print("->", write_result("memory", res))
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    res: dict = {"method": "EXTRAPOLATED from CPU-measured per-block saved activations (see bench/bench_memory.py); "
                           "no GPU measurement", "configs": {}}
    for name in args.configs:
        res["configs"][name] = config_row(name, args.rows, args.measure_tokens, args.peak_tflops, args.mfu)
        r = res["configs"][name]
        k = r["bf16"]
        print(f"{name} bf16: peak {k['peak_GB_no_checkpointing']:.1f} GB (no ckpt) / {k['peak_GB_checkpointing']:.1f} GB (ckpt); "
              f"scene groups of {args.rows} rows in 80 GB {k['groups_fit_80GB']}, 24 GB {k['groups_fit_24GB']}; "
              f"fit error at T={args.measure_tokens[2]}: {k['fit_check_third_T_rel_error']:.3f}", flush=True)
    if "tiny" in args.configs:  # check the extrapolation where the full size is cheap to measure
        full = block_measure("tiny", args.rows, res["configs"]["tiny"]["tokens_per_row"], False)[0]
        pred = res["configs"]["tiny"]["fp32"]["extrapolated_block_saved_GB"] * GB
        res["extrapolation_check_tiny_fp32"] = {"measured_bytes": full, "extrapolated_bytes": pred, "rel_error": abs(pred - full) / full}
        print("tiny extrapolation check:", res["extrapolation_check_tiny_fp32"])
    res["gpu"] = None
    print("->", write_result("memory", res))


if __name__ == "__main__":
    main()
