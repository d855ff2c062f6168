"""`iscene-eval`: versioned benchmarks, predictions and every published scoring protocol.

One module per job (docs/EVAL.md):

- :mod:`.bench`           make-bench (dataset -> self-contained bench folder) and verify
- :mod:`.layout`          the prediction folder: one GLB per scene, a node ``instance_<id>`` each
- :mod:`.pointmetrics`    Chamfer / F-score variants (plain or squared, halved or summed)
- :mod:`.align`           rigid ICP (plain, robust), FilterReg-like, scale + rigid, none
- :mod:`.boxes`           IoU-B (axis-aligned boxes) and per-instance voxel IoU
- :mod:`.physics_metrics` interpenetration and floating instances
- :mod:`.protocols`       iscene | midi | scenegen | depr | gen3dsr, one scene at a time
- :mod:`.score`           a whole bench: per-scene errors recorded, the rest scored, aggregation
- :mod:`.report`          scores.json, markdown, CSV, histograms, contact sheet
- :mod:`.predict`         iscene inference over a bench (batched, resumable)
- :mod:`.convert`         folders of per-instance meshes -> the prediction layout
- :mod:`.cli`             the ``iscene-eval`` command
"""
