"""Pre-training of PEMR and MART (``musicembed train``). Inference code never imports this package.

Modules: ``data`` (file lists, decode-once cache, crop datasets, loaders), ``augment`` (CLMR
chain, batched), ``losses`` (Barlow Twins, PEMR negative term, MART hierarchical loss),
``masks`` (PEMR's frame-mask generator), ``objectives`` (model + heads + loss per method), ``config`` (run config, presets),
``loop`` (training, checkpoints, resume, export), ``distributed`` (torchrun / DDP helpers),
``cli`` (the click commands).
"""
