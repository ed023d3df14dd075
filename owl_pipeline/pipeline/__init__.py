"""The pipeline: its steps described once (graph.py) and what runs them.

    graph.py           the table of steps: name, function, what it reads, params sections, what it writes
    project.py         where a project's assets, reports and records live
    records.py         what a step returns and what its last run left behind (typed)
    data_steps.py      raw_shards, raw_pairs, curated_pairs, instruction_data
    training_steps.py  base_llm, stage1_model, stage2_model (each an MLflow run when tracking is on)
    eval_steps.py      owleval_report, registered_model
    runner.py          run a step, or reuse its last result when its inputs are unchanged
    lineage.py         the DVC hash and Lance version of what each step read and wrote
    ranks.py           which process of a distributed launch writes

Dagster (orchestration/), DVC (dvc.yaml, checked against graph.py) and the CLI all run steps through runner.py.
"""
