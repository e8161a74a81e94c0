"""Pre-training of PEMR and MART (``musicembed train``). Inference code never imports this package.

Modules: ``data`` (file lists, decode-once cache, crop datasets, loaders), ``augment`` (CLMR
chain, batched), ``losses`` (Barlow Twins, PEMR negative term, MART hierarchical loss),
``objectives`` (model + heads + loss per method), ``runconfig`` (run config, presets),
``loop`` (training, checkpoints, resume, export), ``distributed`` (torchrun / DDP helpers),
``cli`` (the click commands).
"""
