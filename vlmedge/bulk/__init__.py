"""Bulk inference over many inputs: one job, two stages, two engines, two writers.

    job.py      BulkJob / make_job: which artifact runs which task method (vlmedge.registry)
                with which options, checked by the pipelines' own checks
    inputs.py   the one walker: files, folders, .parquet/.csv/.txt tables -> input rows
    prepare.py  stage 1, no model: decode + preprocess -> pixels / tokens / prepared clips
    predict.py  stage 2, one loaded pipeline: its `<method>_prepared` -> result columns
    table.py    result columns and their Arrow types
    local.py    the local engine: both stages in this process
    ray.py      the Ray Data engine: stage 1 in CPU tasks, stage 2 in an actor pool
                (its public face is vlmedge.ray)
    writers.py  ParquetWriter and NpyWriter (.npy + <name>.files.json)
    command.py  the CLI's `predict --out x.parquet` and `embed`

Each result row equals what the single-process pipeline returns for that input; an input
that cannot be read gets a message in the ``error`` column instead of failing the run.
"""
