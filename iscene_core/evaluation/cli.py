"""iscene-eval: versioned benchmarks, predictions and every published scoring protocol.

    iscene-eval make-bench --from data/ood_rand --out benches/ood-rand --n 500
    iscene-eval verify benches/ood-rand
    iscene-eval score --bench benches/ood-rand --pred benches/ood-rand/gt        # sanity check
    iscene-eval predict --bench benches/ood-rand --weights TRELLIS-image-large --out preds/ours
    iscene-eval convert --src midi_out --bench benches/ood-rand --out preds/midi --frame view
    iscene-eval baseline --kind mean-box --from data/rand15k --bench benches/ood-rand --out preds/mean-box
    iscene-eval score --bench benches/ood-rand --pred preds/ours --protocol iscene,midi,scenegen,depr,gen3dsr

Protocols, their sources and where we depart from them: docs/EVAL.md. Exit codes: 0 done,
1 the run failed (or verify found a problem), 2 bad arguments or paths (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

PROTOCOL_NAMES = ("iscene", "midi", "scenegen", "depr", "gen3dsr")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (the family rule)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _share(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {s!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {v}")
    return v


def _protocols(s: str) -> list[str]:
    names = list(PROTOCOL_NAMES) if s == "all" else [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in names if x not in PROTOCOL_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown protocol {bad[0] if bad else s!r}; choose from {', '.join(PROTOCOL_NAMES)} or all")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="iscene-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show full tracebacks when something fails")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    b = sub.add_parser("make-bench", help="make a self-contained benchmark folder from an iscene-datagen dataset")
    b.add_argument("--from", dest="dataset", type=Path, required=True, help="iscene-datagen dataset folder (holds dataset.json)")
    b.add_argument("--out", type=Path, required=True, help="bench folder to write (must not already hold a bench.json)")
    b.add_argument("--n", type=_positive, default=None, help="number of scenes (default: every scene that passes the filters)")
    b.add_argument("--views", type=_positive, default=1, help="views per scene (default 1: the first view of each scene)")
    b.add_argument("--assets", type=Path, action="append", default=[],
                   help="asset catalog folder or manifest.parquet to rebuild GT meshes from (repeatable; default: the built-in procedural catalog)")
    b.add_argument("--future-dir", type=Path, default=None, help="3D-FUTURE-model folder (3D-FRONT datasets): assets found by uid")
    b.add_argument("--split", choices=["train", "test"], default=None, help="keep only 3D-FRONT rooms of this side of split.jsonl")
    b.add_argument("--min-stacked", type=_share, default=None, help="keep scenes where at least this share of instances stand on_top_of another (ood-stack: 0.5)")
    b.add_argument("--name", default=None, help="bench name in bench.json (default: the --out folder name)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    v = sub.add_parser("verify", help="check every file of a bench against the sha256 in bench.json")
    v.add_argument("bench", type=Path, help="bench folder")

    s = sub.add_parser("score", help="score a prediction folder against a bench")
    s.add_argument("--bench", type=Path, required=True, help="bench folder (make-bench)")
    s.add_argument("--pred", type=Path, required=True, help="prediction folder: <key>.glb per scene (predict, convert, or a bench's gt/)")
    s.add_argument("--protocol", type=_protocols, default=["iscene"], help="iscene | midi | scenegen | depr | gen3dsr, a comma list, or all (default iscene)")
    s.add_argument("--out", type=Path, default=None, help="output folder for scores.json, scores.md, scenes.csv, histograms.png, worst.png (default PRED/scores)")
    s.add_argument("--points", type=_positive, default=None, help="override the protocol's point count (per instance or per scene, as the protocol samples)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    pr = sub.add_parser("predict", help="run iscene inference over a bench (resumable)")
    pr.add_argument("--bench", type=Path, required=True, help="bench folder")
    pr.add_argument("--weights", type=Path, required=True, help="TRELLIS-image-large folder (pipeline.json + ckpts/) or one in that layout")
    pr.add_argument("--flow-weights", type=Path, default=None, help="fine-tuned flow weights (.safetensors, e.g. an iscene-train ema.safetensors)")
    pr.add_argument("--dinov2", type=Path, default=None, help="local DINOv2 ViT-L/14-reg (transformers folder or torch.hub layout); default torch.hub's cache")
    pr.add_argument("--out", type=Path, required=True, help="prediction folder to write (finished scenes are kept on a rerun)")
    pr.add_argument("--batch-scenes", type=_positive, default=4, help="scenes sampled together in one forward pass (memory permitting)")
    pr.add_argument("--steps", type=_positive, default=None, help="sampler steps (default: pipeline.json)")
    pr.add_argument("--cfg", type=float, default=None, help="classifier-free guidance strength (default: pipeline.json)")
    pr.add_argument("--seed", type=int, default=0, help="noise seed (per scene: seed + scene index)")
    pr.add_argument("--no-sca", action="store_true", help="sample instances independently (ablation)")
    pr.add_argument("--conditioner-weights", type=Path, default=None,
                    help="a --conditioner learned run's image encoder (conditioner.safetensors + .json from its checkpoint) instead of DINOv2")
    pr.add_argument("--instance-view", choices=("crop", "masked-frame"), default="crop",
                    help="instance conditioning image; must match iscene-train --instance-view (default crop, TRELLIS's)")
    pr.add_argument("--image-size", type=_positive, default=None,
                    help="crop side fed to the conditioner (default: the size it was built for; iscene-train --image-size)")
    pr.add_argument("--space", choices=("view", "world"), default="view",
                    help="voxel frame the flow was trained in; world output is mapped into the bench's view grid with the true camera")
    pr.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")

    c = sub.add_parser("convert", help="turn folders of per-instance meshes into the prediction layout")
    c.add_argument("--src", type=Path, required=True, help="folder with one sub-folder per bench scene key, holding one mesh file per instance "
                                                          "(name ending in the instance id, e.g. instance_3.glb or obj_3.ply)")
    c.add_argument("--bench", type=Path, required=True, help="bench the meshes answer (scene keys, cameras)")
    c.add_argument("--out", type=Path, required=True, help="prediction folder to write")
    c.add_argument("--frame", choices=["grid", "view"], default="view", help="frame the meshes are in: bench view grid cube, or metres in the view frame")
    c.add_argument("--axes", choices=["ours", "yup"], default="ours",
                   help="axis convention of the files: ours (x right, y forward, z up) or yup (glTF: x right, y up, z toward the viewer)")
    c.add_argument("--system", default="external", help="system name recorded in prediction.json")

    b = sub.add_parser("baseline", help="write a reference prediction a model must beat (mean-box: every instance at the training mean box)")
    b.add_argument("--kind", choices=["mean-box"], default="mean-box", help="mean-box: the training set's mean instance box in the view grid")
    b.add_argument("--from", dest="dataset", type=Path, required=True, help="training dataset folder whose instances are averaged")
    b.add_argument("--bench", type=Path, required=True, help="bench to predict")
    b.add_argument("--out", type=Path, required=True, help="prediction folder to write")
    b.add_argument("--limit", type=_positive, default=None, help="average over the first N training samples only")
    return p


def _cmd_make_bench(args) -> int:
    from iscene_core.evaluation.bench import make_bench

    for a in args.assets:
        if not a.exists():
            raise _Usage(f"--assets {a}: not found")
    if args.future_dir is not None and not args.future_dir.is_dir():
        raise _Usage(f"--future-dir {args.future_dir}: not a folder")
    m = make_bench(args.dataset, args.out, n=args.n, views=args.views, catalogs=args.assets, future_dir=args.future_dir,
                   split=args.split, min_stacked=args.min_stacked, name=args.name, progress=not args.no_progress)
    print(f"{args.out}: bench {m['name']} with {len(m['scenes'])} scenes, {len(m['assets'])} assets, {len(m['files'])} files "
          f"({len(m['skipped'])} samples skipped; reasons in bench.json)")
    return 0


def _cmd_verify(args) -> int:
    from iscene_core.evaluation.bench import verify_bench

    problems = verify_bench(args.bench)
    for line in problems[:50]:
        print(f"{args.bench}: {line}", file=sys.stderr)
    if problems:
        print(f"{args.bench}: FAILED ({len(problems)} problems)", file=sys.stderr)
        return 1
    print(f"{args.bench}: ok")
    return 0


def _cmd_score(args) -> int:
    from iscene_core.evaluation.bench import load_bench
    from iscene_core.evaluation.layout import read_prediction_info
    from iscene_core.evaluation.protocols import get_protocol
    from iscene_core.evaluation.report import write_report
    from iscene_core.evaluation.score import aggregate, score_bench

    bench = load_bench(args.bench)
    info = read_prediction_info(args.pred)
    protocols = [get_protocol(n) for n in args.protocol]
    rows = score_bench(bench, args.pred, protocols, points=args.points, progress=not args.no_progress, debug=args.debug)
    results = {p.name: {"protocol": p.describe(), "summary": aggregate(rows[p.name]), "scenes": rows[p.name]} for p in protocols}
    out = args.out or (args.pred / "scores")
    write_report(out, bench, args.pred, info, results, args.points)
    for name, res in results.items():
        s = res["summary"]
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(f"{name}: CD-S {fmt(s['cd_s'], '.4f')} F-S {fmt(s['f_s'], '.2f')} CD-O {fmt(s['cd_o'], '.4f')} F-O {fmt(s['f_o'], '.2f')} "
              f"IoU-B {fmt(s['iou_b'], '.4f')} voxel-IoU {fmt(s['voxel_iou'], '.4f')} interpen. {fmt(s['interpenetration'], '.4f')} "
              f"floating {fmt(s['floating'], '.3f')} | scored {s['n_scored']} skipped {s['n_skipped']} failed {s['n_failed']}")
    print(f"reports in {out}")
    if all(res["summary"]["n_scored"] == 0 for res in results.values()):
        print("iscene-eval score: no scene could be scored (reasons in scores.md)", file=sys.stderr)
        return 1
    return 0


def _cmd_predict(args) -> int:
    from iscene_core.evaluation.predict import predict_bench

    rep = predict_bench(args.bench, args.weights, args.out, flow_weights=args.flow_weights, dinov2=args.dinov2,
                        batch_scenes=args.batch_scenes, steps=args.steps, cfg=args.cfg, seed=args.seed, sca=not args.no_sca,
                        device=args.device, progress=not args.no_progress, conditioner_weights=args.conditioner_weights,
                        instance_view=args.instance_view, space=args.space, image_size=args.image_size)
    print(f"{args.out}: {rep['done']} scenes predicted, {rep['kept']} kept from an earlier run, {rep['failed']} failed "
          f"({rep['seconds']:.1f} s)")
    return 1 if rep["failed"] and rep["done"] + rep["kept"] == 0 else 0


def _cmd_convert(args) -> int:
    from iscene_core.evaluation.convert import convert_folder

    rep = convert_folder(args.src, args.bench, args.out, frame=args.frame, axes=args.axes, system=args.system)
    print(f"{args.out}: {rep['scenes']} scenes, {rep['instances']} instances; {len(rep['missing_scenes'])} bench scenes without a folder")
    return 0


def _cmd_baseline(args) -> int:
    from iscene_core.evaluation.baselines import mean_instance_box, write_box_prediction

    if not args.dataset.is_dir():
        raise _Usage(f"--from {args.dataset}: not a dataset folder")
    box = mean_instance_box(args.dataset, limit=args.limit)
    rep = write_box_prediction(args.bench, args.out, box)
    lo, hi = ", ".join(f"{v:.1f}" for v in box["min"]), ", ".join(f"{v:.1f}" for v in box["max"])
    print(f"{args.out}: {rep['scenes']} scenes, every instance at the mean of {box['instances']} training boxes "
          f"(grid voxels [{lo}] .. [{hi}])")
    return 0


class _Usage(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    from iscene_core.evaluation.errors import EvalError

    handlers = {"make-bench": _cmd_make_bench, "verify": _cmd_verify, "score": _cmd_score, "predict": _cmd_predict, "convert": _cmd_convert,
                "baseline": _cmd_baseline}
    try:
        return handlers[args.cmd](args)
    except (EvalError, _Usage) as exc:
        if args.debug:
            raise
        print(f"iscene-eval {args.cmd}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"iscene-eval {args.cmd}: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the family rule: one line unless --debug
        if args.debug:
            raise
        print(f"iscene-eval {args.cmd}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
