"""Deploying a finished run: ``predict`` image files, ``export`` to ONNX, torch.export or TorchScript."""

from .bundle import PixelClassifier, Preprocessing, RunModel, best_student_per_dataset, find_run, load_run_model
from .predict import Prediction, find_images, iter_predictions, load_exported, predict_files, torch_logits

__all__ = [
    "PixelClassifier",
    "Preprocessing",
    "RunModel",
    "best_student_per_dataset",
    "find_run",
    "load_run_model",
    "Prediction",
    "find_images",
    "load_exported",
    "predict_files",
    "iter_predictions",
    "torch_logits",
]
