"""Fixes that make the PyPI OpenMMLab stack (mmengine 0.10.7, mmaction2 1.2.0) work. Placeholder."""


def apply() -> None:
    """Apply every fix; each is a no-op where its upstream defect is absent."""
