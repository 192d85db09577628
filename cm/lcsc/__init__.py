"""LCSC: linear combinations of saved checkpoints (docs/methods.md section 4), and the baselines.

snapshots.py     reads one member (online, EMA, power EMA) of one snapshot at a time
coefficients.py  coefficient vectors: EMA shapes, EMA at a rate, uniform last k, projection
candidates.py    Candidate: a named coefficient vector over snapshot members; the search start
baselines.py     the baseline candidates (snapshots alone, EMAs, post-hoc EMA, greedy soup)
merge.py         theta = sum_i a_i theta_i in float32: streamed from disk, or from a device stack
fitness.py       sample quality of merged parameters on fixed seeds (compiled once)
search.py        evolutionary search and CMA-ES with a fitness cache, resumed by replay
search_state.py  everything evaluated so far, in state.json (JSON, atomic writes)
report.py        the held-out table
outputs.py       coefficients.json, generations.json, heldout.json, charts, merged/
plots.py         PNG line and bar charts with pillow
run.py           --mode=lcsc: baselines, search, held-out comparison, outputs
"""
