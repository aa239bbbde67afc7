"""The tools a user runs: compare methods over seeds (``python compare.py``), explain a trained
model's predictions on image files (``python -m distill.explain``) and export a network for use
without this toolkit (``python -m distill.export``).

They sit at the end of the flow and may import every other part of the package; nothing but
the command lines imports them (``distill.export_model`` on first use).
"""
