"""The tools a user runs: one training run, teacher then student (:mod:`distill.tools.train`,
``python train.py``), a comparison of methods over seeds (``python compare.py``), explanations
of a trained model's predictions on image files (``python -m distill.explain``) and an export
of a network for use without this toolkit (``python -m distill.export``).

They sit at the end of the flow and may import every other part of the package; nothing but
the command lines imports them (and ``distill.export_model``, on first use).
"""
