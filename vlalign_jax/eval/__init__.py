"""Evaluation of trained models (retrieval, zero-shot, ...) and plots of a run's metrics."""
