"""CLIP-VG's self-paced curriculum adapting (SSA, MSA; research/clipvg.md section 4), reconstructed.

The release has only the reliability scorer (`engine.py::evaluate_for_filtering`); the selection loop
is rebuilt from the paper's figure and the released label files. Every choice the sources leave open
is a `curriculum.*` config option, listed in `settings.py`.

settings.py   the `curriculum.*` options and their defaults ([UNVERIFIED] choices documented there)
reliability.py  r(s) for every pseudo-label, 1,000-bin histograms, r > h subsets
histogram_plot.py  the histogram as a PNG (PIL)
workspace.py  the workdir: state file, per-stage split folders, score/selection files
driver.py     one curriculum run: train a stage, score a source, write selections (memoised, resumable)
ssa.py, msa.py  the single- and multi-source schedules
synthetic_sources.py  noisy pseudo-label sources drawn from the synthetic shapes (demo, tests)
command.py    `vlalign curriculum --config FILE --workdir DIR`
"""
