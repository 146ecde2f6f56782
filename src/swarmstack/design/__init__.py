"""The design agent: a spec and a repository in, a valid ticket DAG (a draft plan) out.

``repo`` summarizes the repository, ``prompts/`` holds what the model is told, ``schema``
what it must answer, ``model`` asks it (with retries on answers that break the schema), and
``agent`` runs the phases: skeleton, expansion, checks with critique and repair rounds.
"""
