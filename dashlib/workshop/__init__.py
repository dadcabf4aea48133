"""The CPU workshop (notebook 07): DASH on a class-conditional 2D toy, in seconds."""

from dashlib.workshop.analysis import (
    class_accuracy,
    gap_at,
    gap_profile,
    loss_terms,
    on_mode,
    sample_toy,
)
from dashlib.workshop.mlp import ToyMLP, ToyModelConfig, build_toy_mlp
from dashlib.workshop.plots import (
    W_FIGURES,
    plot_data,
    plot_fields,
    plot_gap_profiles,
    plot_samples,
    save_figure,
    workshop_provenance,
)
from dashlib.workshop.toy import TOY_BUDGETS, ToyConfig, mode_centers, sample_data, toy_config_for
from dashlib.workshop.train import STUDENT_LOSSES, StudentLoss, Workshop, build_workshop

__all__ = ["STUDENT_LOSSES", "TOY_BUDGETS", "W_FIGURES", "StudentLoss", "ToyConfig", "ToyMLP",
           "ToyModelConfig",
           "Workshop", "build_toy_mlp", "build_workshop", "class_accuracy", "gap_at", "gap_profile",
           "loss_terms", "mode_centers", "on_mode", "plot_data", "plot_fields", "plot_gap_profiles",
           "plot_samples", "sample_data", "sample_toy", "save_figure", "toy_config_for",
           "workshop_provenance"]
