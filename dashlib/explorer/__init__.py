"""The branch-collapse explorer (notebook 06): teacher vs students, branch by branch."""

from dashlib.explorer.debounce import Debouncer
from dashlib.explorer.models import default_runs_dir, load_models, open_explorer
from dashlib.explorer.probe import BranchCache, Branches, ModelView, Probe, ProbeKey, make_probe
from dashlib.explorer.render import render_panels
from dashlib.explorer.widget import BranchExplorer, ExplorerState

__all__ = ["BranchCache", "BranchExplorer", "Branches", "Debouncer", "ExplorerState", "ModelView",
           "Probe", "ProbeKey", "default_runs_dir", "load_models", "make_probe", "open_explorer",
           "render_panels"]
