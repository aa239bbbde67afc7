"""Training: what turns the models, the explanation layer and the losses into a run.

The Lightning modules (:mod:`~distill.training.lightning_modules`) hold metrics, logging and
the optimiser around the importable :class:`distill.ExplanationDistiller`; around them are the
callbacks, loggers, optimisers, ``torch.compile``, checkpoint reading, the teacher cache, run
folders, ``--resume`` and the handling of Ctrl-C. The steps of a run (a stage's Trainer, the
teacher and student stages) are here too; :func:`distill.tools.train.train` strings them
together from a config.

Nothing here imports :mod:`distill.config`: a config section arrives as a plain mapping.
"""
