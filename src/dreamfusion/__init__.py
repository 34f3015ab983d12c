"""dreamfusion: text to 3D with Score Distillation Sampling."""

__version__ = "0.1.0"
