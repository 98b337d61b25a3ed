"""Training: typed config sections, train state, optimizer, the pure train step and the loop.

Entry point: `vdm_jax.train.loop.train_and_evaluate(config, workdir)`.
"""
