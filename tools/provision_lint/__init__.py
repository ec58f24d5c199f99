"""The project's own checks that no existing tool's configuration can express.

Run from the repository root with ``tools`` on ``PYTHONPATH`` (the scripts in ``scripts/`` do
that), one module per concern, e.g. ``python -m provision_lint.checkov_report``. Each module's
functions take paths or parsed data and return problems, so ``tools/tests`` can feed them bad
inputs; each ``main`` prints one ``ok``/``FAIL`` line per check and exits 1 on any failure.
"""
