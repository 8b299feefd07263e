"""pgkit: policy-gradient algorithms on PyTorch Lightning, driven by one typed YAML config."""

__version__ = "0.1.0"
