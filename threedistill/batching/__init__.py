"""Batches of runs on Ray: `threedistill batch SPEC` and `td.batch` (README: Batch). The folder is
not named `batch/` because `td.batch` is the API function and a subpackage would shadow it.

spec.py     prompts files and YAML sweeps -> one BatchRun per run, all checked before Ray starts
naming.py   stable run folder names (prompt, seed, overrides)
cluster.py  joining or starting Ray, resources per run, token authentication notes
task.py     one run in a Ray worker: skip, resume from last.pt or start; thumbnail; report row
runner.py   the driver: tasks, retries, progress, the report as runs finish
report.py   batch.csv / batch.json / report.md / contact_sheet.png
tune.py     `--tune`: the runs as Ray Tune trials with early stopping, resumable
submit.py   td.batch: spec -> checked runs -> runner or tune
"""
