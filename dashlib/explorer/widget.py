"""`BranchExplorer`: an ipywidgets view of how teacher and student branches behave.

Controls (a column beside the picture): which students (checkboxes), class,
timestep t, guidance (constant w, or TAG whose w(t) is shown and the w slider
disabled), seed, whether the gap colour scale follows t, and a "Run DDIM"
button. Each change redraws one PNG of panels (see `dashlib.explorer.render`)
plus a statistics table. Forward passes are cached per (model, class, t, seed),
so changing only the guidance costs no forward pass, and events are debounced.
"""

from __future__ import annotations

import html
import math
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import torch

from dashlib.artifacts import Artifact
from dashlib.config import MAX_SEED, SampleConfig
from dashlib.data import Dataset
from dashlib.explorer.debounce import Debouncer
from dashlib.explorer.probe import (
    BranchCache,
    GapProfile,
    ModelView,
    ProbeKey,
    gap_profile,
    make_probe,
    model_view,
    profile_timesteps,
)
from dashlib.explorer.render import Profile, fmt, png_bytes, render_panels
from dashlib.explorer.trajectory import SampleCache, guidance_label
from dashlib.guidance import Guidance
from dashlib.io import printable

TEACHER = "teacher"


@dataclass(frozen=True)
class ExplorerState:
    """The current selection."""

    students: tuple[str, ...]
    y: int
    t: int
    seed: int
    guidance: str  # "constant" or "tag"
    w: float
    per_t_scale: bool = False  # gap colour scale: the teacher's peak at this t, not over all t


def build_controls(students: list[str], class_names: tuple[str, ...], T: int,
                   initial: ExplorerState) -> dict[str, widgets.Widget]:
    """The input widgets; sliders only report on release (continuous_update=False)."""
    style = {"description_width": "80px"}
    return {
        **{f"student:{name}": widgets.Checkbox(value=name in initial.students, description=name,
                                               indent=False, layout=widgets.Layout(width="auto"))
           for name in students},
        "y": widgets.Dropdown(options=[(n, i) for i, n in enumerate(class_names)], value=initial.y,
                              description="class", style=style),
        "t": widgets.IntSlider(value=initial.t, min=0, max=T - 1, step=1, description="timestep t",
                               continuous_update=False, style=style,
                               layout=widgets.Layout(width="330px")),
        "guidance": widgets.ToggleButtons(options=[("constant w", "constant"), ("TAG", "tag")],
                                          value=initial.guidance, description="guidance",
                                          style={**style, "button_width": "100px"}),
        "w": widgets.FloatSlider(value=initial.w, min=0.0, max=8.0, step=0.25, description="w",
                                 continuous_update=False, style=style,
                                 disabled=initial.guidance == "tag",
                                 layout=widgets.Layout(width="330px")),
        "seed": widgets.BoundedIntText(value=initial.seed, min=0, max=MAX_SEED, description="seed",
                                       style=style, layout=widgets.Layout(width="180px")),
        "per_t_scale": widgets.Checkbox(value=initial.per_t_scale, indent=False,
                                        description="gap colour scale per t"),
    }


class BranchExplorer:
    """Teacher vs students at matched inputs; display it as the last expression of a cell.

    teacher: the CFG teacher (both branches); students: name -> artifact (a
    single-head student shows "no unconditional branch"); data: the dataset
    whose held-out split gives x_0; sample: the DDIM/guidance config (its TAG
    parameters and step count are used); n_stats: rows per probe for rho/cos;
    notice: a warning banner above the controls (e.g. the models are too small to
    mean much); profile_points, profile_rows: timesteps and probe rows of the
    |delta|-against-t profile (one batched forward per model, cached per class and seed).
    """

    def __init__(self, teacher: Artifact, students: Mapping[str, Artifact], data: Dataset,
                 sample: SampleConfig, *, n_stats: int = 16, debounce_s: float = 0.15,
                 t: int | None = None, y: int = 0, seed: int = 0, guidance: str = "tag",
                 w: float | None = None, title: str = "", notice: str = "",
                 profile_points: int = 16, profile_rows: int = 4) -> None:
        if not teacher.model.config.cfg:
            raise ValueError("the teacher must have an unconditional branch (cfg=True)")
        if TEACHER in students:
            raise ValueError(f"{TEACHER!r} is reserved for the teacher; rename that student")
        self.models: dict[str, Artifact] = {TEACHER: teacher, **students}
        self.diffusion, self.split, self.sample = teacher.diffusion, data.test, sample
        self.n_stats, self.title, self.class_names = n_stats, title, data.class_names
        self.profile_t = profile_timesteps(teacher.diffusion.T, profile_points)
        self.profile_rows = min(profile_rows, n_stats)
        self._profiles: dict[tuple[int, int], GapProfile] = {}
        self.cache, self.samples = BranchCache(), SampleCache(sample)
        self.timings: list[float] = []
        T = self.diffusion.T
        initial = ExplorerState(tuple(students), y, T // 2 if t is None else t, seed, guidance,
                                sample.w if w is None else w)
        self.controls = build_controls(list(students), data.class_names, T, initial)
        self.run_button = widgets.Button(description="Run DDIM", icon="play",
                                         tooltip=f"{sample.steps}-step DDIM for every shown model")
        self.image = widgets.Image(format="png")
        self.stats, self.status, self.w_now = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.banner = widgets.HTML(banner_html(notice))
        self.widget = self._layout()
        self._debounce = Debouncer(self.redraw, debounce_s)
        for control in self.controls.values():
            control.observe(self._debounce.trigger, names="value")
        self.run_button.on_click(lambda _: self.run_ddim())
        self.redraw()

    def _layout(self) -> widgets.VBox:
        """Controls in a column beside the picture, so both fit one screen."""
        c = self.controls
        students = [w for k, w in c.items() if k.startswith("student:")]
        picked = widgets.VBox([widgets.HTML("<b>students</b> (the teacher is always shown)"),
                               *students])
        controls = widgets.VBox([c["y"], c["t"], c["guidance"], c["w"], self.w_now, c["seed"],
                                 c["per_t_scale"], picked, self.run_button],
                                layout=widgets.Layout(width="360px", flex="0 0 360px"))
        results = widgets.VBox([self.image, self.stats, self.status],
                               layout=widgets.Layout(flex="1 1 auto"))
        return widgets.VBox([self.banner, widgets.HBox([controls, results])])

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def state(self) -> ExplorerState:
        c = self.controls
        students = tuple(k.split(":", 1)[1] for k, w in c.items() if k.startswith("student:") and w.value)
        return ExplorerState(students, int(c["y"].value), int(c["t"].value), int(c["seed"].value),
                             str(c["guidance"].value), float(c["w"].value),
                             bool(c["per_t_scale"].value))

    def set(self, **values: Any) -> None:
        """Set controls by name (students, y, t, guidance, w, seed, per_t_scale), as a user would.

        Inside a kernel the redraw is debounced (it follows `debounce_s` after the
        cell returns); call `redraw()` to draw at once.
        """
        for name, value in values.items():
            if name == "students":
                unknown = set(value) - {k.split(":", 1)[1] for k in self.controls if ":" in k}
                if unknown:
                    raise ValueError(f"unknown students {sorted(unknown)}")
                for key, box in self.controls.items():
                    if key.startswith("student:"):
                        box.value = key.split(":", 1)[1] in value
            else:
                self.controls[name].value = value

    def guidance(self, state: ExplorerState) -> Guidance:
        """The selected guidance: constant at the w slider, or TAG with `sample`'s parameters."""
        return Guidance.parse("tag" if state.guidance == "tag" else state.w, self.sample)

    def w_at(self, state: ExplorerState) -> float:
        """The guidance scale used at the selected timestep (constant w or TAG's w(t))."""
        t = torch.tensor([state.t])
        return float(self.guidance(state).scale(t, self.diffusion.T)[0])

    def rows(self, state: ExplorerState) -> list[str]:
        return [TEACHER, *state.students]

    def profile(self, state: ExplorerState) -> GapProfile:
        """Every model's E|delta| over the profile's timesteps at (class, seed), computed
        once for all models (so ticking a student costs nothing) and kept."""
        key = (state.y, state.seed)
        if key not in self._profiles:
            models = {name: art.model for name, art in self.models.items()}
            self._profiles[key] = gap_profile(models, self.split, self.diffusion, state.y, state.seed,
                                              self.n_stats, self.profile_rows, self.profile_t, TEACHER)
        return self._profiles[key]

    def profiles(self, state: ExplorerState, views: list[ModelView], gaps: GapProfile) -> list[Profile]:
        """The profile column's curves, one y-range for every row so heights compare."""
        finite = [v for name in self.rows(state) for v in gaps.gap_abs[name] if not math.isnan(v)]
        finite += [v.stats["student_gap_abs"] for v in views
                   if not math.isnan(v.stats["student_gap_abs"])]
        ymax = 1.05 * max(finite, default=1.0)
        ref = gaps.gap_abs[TEACHER]
        return [Profile(gaps.timesteps, gaps.gap_abs[v.name], ref, state.t,
                        v.stats["student_gap_abs"], ymax) for v in views]

    def views(self, state: ExplorerState) -> list[ModelView]:
        """Teacher first, then each selected student, at the current probe."""
        probe = make_probe(self.split, self.diffusion, ProbeKey(state.y, state.t, state.seed),
                           self.n_stats)
        teacher = self.cache.get(TEACHER, self.models[TEACHER].model, probe)
        w = self.w_at(state)
        return [model_view(name, self.cache.get(name, self.models[name].model, probe), teacher,
                           probe, self.diffusion, w) for name in self.rows(state)]

    def redraw(self) -> float:
        """Recompute (cached) and redraw everything; returns the seconds it took."""
        start = time.perf_counter()
        try:
            state = self.state()
            views = self.views(state)
            guidance = self.guidance(state)
            samples = [self.samples.lookup(n, guidance, state.y, state.seed) for n in self.rows(state)]
            ab = float(self.diffusion.alpha_bar[state.t])
            title = (f"{self.title}  class {printable(self.class_names[state.y])}, t = {state.t} "
                     f"(alpha_bar {ab:.3f}), "
                     f"seed {state.seed}, guidance {guidance_label(guidance)}").strip()
            gaps = self.profile(state)
            scale = None if state.per_t_scale else gaps.peak
            self.image.value = png_bytes(render_panels(views, samples, title, scale=scale,
                                                       profiles=self.profiles(state, views, gaps)))
            self.controls["w"].disabled = state.guidance == "tag"
            self.w_now.value = w_note(state, views[0].w)
            self.stats.value = stats_table(views, self.n_stats, int((self.split.y == state.y).sum()))
        except Exception:  # shown in the widget: a callback has nowhere else to report
            self.status.value = f"<pre style='color:#b00'>{html.escape(traceback.format_exc())}</pre>"
            raise
        elapsed = time.perf_counter() - start
        self.timings.append(elapsed)
        self.status.value = (f"redraw {elapsed * 1000:.0f} ms; forward-pass cache: "
                             f"{self.cache.hits} hits, {self.cache.misses} misses")
        return elapsed

    def timing_summary(self) -> str:
        """Median and worst redraw time so far (each is one control change)."""
        if not self.timings:
            return "no redraws yet"
        ms = sorted(1000 * t for t in self.timings)
        return (f"{len(ms)} redraws: median {ms[len(ms) // 2]:.0f} ms, max {ms[-1]:.0f} ms "
                f"(cache: {self.cache.hits} hits, {self.cache.misses} misses)")

    def run_ddim(self) -> None:
        """Sample every shown model from the same seeded x_T, then redraw."""
        state = self.state()
        guidance = self.guidance(state)
        self.run_button.disabled = True
        self.status.value = f"running {self.sample.steps}-step DDIM ({guidance_label(guidance)}) ..."
        try:
            for name in self.rows(state):
                art = self.models[name]
                self.samples.run(name, art.model, art.diffusion, guidance, state.y, state.seed)
        finally:
            self.run_button.disabled = False
        self.redraw()


def banner_html(notice: str) -> str:
    """A yellow warning strip, or nothing."""
    if not notice:
        return ""
    return ("<div style='background:#fff3cd;border:1px solid #e0c36a;padding:6px 10px;"
            f"margin-bottom:6px'>&#9888; {html.escape(notice)}</div>")


def w_note(state: ExplorerState, w: float) -> str:
    """What guidance scale the panels use at this t."""
    if state.guidance == "tag":
        return (f"<span style='margin-left:84px' title='the w slider is unused under TAG'>"
                f"TAG: w(t = {state.t}) = <b>{fmt(w)}</b></span>")
    return f"<span style='margin-left:84px'>constant w = <b>{fmt(w)}</b></span>"


def stats_table(views: list[ModelView], n: int, held_out: int) -> str:
    """An HTML table of each model's gap statistics at the current timestep, over `n` noised
    draws of the class's `held_out` images (`make_probe` repeats them, with new noise,
    where the class has fewer than n)."""
    cols = [("w(t)", None), ("E|delta|", "student_gap_abs"), ("rho", "rho"), ("cos", "cos"),
            ("gap MSE", "gap_mse"), ("cond MSE", "cond_mse"), ("uncond MSE", "uncond_mse")]
    head = "".join(f"<th style='padding:2px 8px'>{html.escape(c)}</th>" for c, _ in cols)
    body = []
    for v in views:
        cells = [fmt(v.w)] + [_cell(v.stats[k]) for _, k in cols[1:]]
        note = " (no unconditional branch)" if v.eps_uncond is None else ""
        tds = "".join(f"<td style='padding:2px 8px;text-align:right'>{c}</td>" for c in cells)
        body.append(f"<tr><td>{html.escape(v.name)}{note}</td>{tds}</tr>")
    return (f"<table><tr><th>model</th>{head}</tr>{''.join(body)}</table>"
            f"<small>statistics over {_draws(n, held_out)} at this timestep; "
            f"rho = E|delta_S| / E|delta_T|, cos = mean cos(delta_S, delta_T) vs the teacher</small>")


def _draws(n: int, held_out: int) -> str:
    """What the statistics average over: n images, or n noised draws of fewer images."""
    if held_out >= n:
        return f"{n} held-out images of this class"
    return f"{n} noised draws of this class's {held_out} held-out image(s)"


def _cell(value: float) -> str:
    return fmt(value)
